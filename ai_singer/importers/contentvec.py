"""A fairseq HuBERT / ContentVec checkpoint -> the Hugging Face ``HubertModel`` folder ``content=hubert`` reads.

    python -m ai_singer.importers contentvec checkpoint_best_legacy_500.pt pretrain/content/contentvec
    ai-singer import contentvec hubert_base.pt pretrain/content/hubert-base

Reads the checkpoint without fairseq (:mod:`ai_singer.importers.fairseq_checkpoint`: weights-only loading
with an allow-list), renames its tensors to ``transformers``' HubertModel layout and writes, atomically:

* ``config.json``: the ``HubertConfig`` built from the checkpoint's own config (layers, widths, heads,
  convolution stack, positional convolution, layer-norm placement);
* ``model.safetensors``: the HubertModel tensors in float32, plus ContentVec's/HuBERT's projection head
  ``final_proj.weight`` [final_dim, hidden] / ``final_proj.bias`` (768 -> 256 for ContentVec) at the top
  level, where the hubert backend looks for it (``content.final_proj=true``);
* ``import.json``: the source file's name, size and sha256, the weights' sha256, what was dropped
  (``label_embs_concat``: the training targets) and the encoder settings of the two usual setups
  (768-dim: ``layer=12 final_proj=false``; 256-dim: ``layer=9 final_proj=true``).

fairseq -> transformers names (fairseq/models/hubert/hubert.py, fairseq/models/wav2vec/wav2vec2.py):
``feature_extractor.conv_layers.i.0`` (conv) -> ``...conv_layers.i.conv``; the norm of a block
(``.2``: GroupNorm of block 0 in ``extractor_mode=default``, ``.2.1``: LayerNorm of every block in
``layer_norm`` mode) -> ``...conv_layers.i.layer_norm``; ``layer_norm`` -> ``feature_projection.layer_norm``;
``post_extract_proj`` -> ``feature_projection.projection``; ``encoder.pos_conv.0`` (weight-normed:
``weight_g``/``weight_v``) -> ``encoder.pos_conv_embed.conv``; per layer ``self_attn.{q,k,v,out}_proj`` ->
``attention.*``, ``self_attn_layer_norm`` -> ``layer_norm``, ``fc1``/``fc2`` ->
``feed_forward.intermediate_dense``/``output_dense``, ``final_layer_norm`` as is; ``mask_emb`` ->
``masked_spec_embed``. Any other tensor is an error (e.g. the non-legacy ContentVec checkpoint).
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ai_singer.atomic import atomic_folder, remove_stale_temporaries, restore_set_aside
from ai_singer.errors import UserError
from ai_singer.importers.fairseq_checkpoint import parse_conv_layers, read_fairseq_checkpoint

#: fairseq HubertConfig's defaults (fairseq/models/hubert/hubert.py) for the settings read here: a checkpoint
#: whose config omits one was made with this value.
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_type": "transformer", "final_dim": 0,
    "untie_final_proj": False, "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", "conv_bias": False,
    "conv_pos": 128, "conv_pos_groups": 16, "conv_pos_batch_norm": False, "pos_conv_depth": 1,
}

#: fairseq activation name -> transformers ``hidden_act`` (fairseq's gelu is the exact erf form).
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_accurate": "gelu_new"}

#: Tensors used only by HuBERT's pre-training loss (its cluster targets), not by the encoder.
_TRAINING_ONLY = re.compile(r"^(label_embs_concat|target_glu\..*)$")

#: fairseq module -> transformers module, for their ``weight``/``bias``: top level, inside each encoder layer
#: (``encoder.layers.N.``) and inside each convolution block (``feature_extractor.conv_layers.N.``; the norm
#: is ``.2`` in extractor_mode=default, ``.2.1`` in layer_norm mode).
_MODULES = {"layer_norm": "feature_projection.layer_norm", "post_extract_proj": "feature_projection.projection",
            "encoder.layer_norm": "encoder.layer_norm", "final_proj": "final_proj"}
_LAYER_MODULES = {"self_attn.q_proj": "attention.q_proj", "self_attn.k_proj": "attention.k_proj",
                  "self_attn.v_proj": "attention.v_proj", "self_attn.out_proj": "attention.out_proj",
                  "self_attn_layer_norm": "layer_norm", "fc1": "feed_forward.intermediate_dense",
                  "fc2": "feed_forward.output_dense", "final_layer_norm": "final_layer_norm"}
_CONV_MODULES = {"0": "conv", "2": "layer_norm", "2.1": "layer_norm"}
_BLOCK = re.compile(r"(encoder\.layers|feature_extractor\.conv_layers)\.(\d+)\.(.+)")

#: transformers' weight-norm parametrisation names -> the classic names it also loads (and the Hub uses).
_WEIGHT_NORM_NAMES = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}

#: The two content setups of so-vits-svc 4.x, as ``content=hubert`` settings.
USUAL_SETTINGS = {"vec768l12": {"layer": 12, "final_proj": False}, "vec256l9": {"layer": 9, "final_proj": True}}


@dataclass(frozen=True)
class HubertArchitecture:
    """What a fairseq HuBERT checkpoint's config says about its architecture (fairseq's names)."""

    encoder_layers: int
    encoder_embed_dim: int
    encoder_ffn_embed_dim: int
    encoder_attention_heads: int
    conv_layers: tuple[tuple[int, int, int], ...]
    extractor_mode: str
    conv_bias: bool
    conv_pos: int
    conv_pos_groups: int
    layer_norm_first: bool
    activation_fn: str

    def summary(self) -> str:
        return (f"encoder_layers={self.encoder_layers}, encoder_embed_dim={self.encoder_embed_dim}, "
                f"encoder_ffn_embed_dim={self.encoder_ffn_embed_dim}, conv_feature_layers={list(self.conv_layers)}, "
                f"extractor_mode={self.extractor_mode}, conv_pos={self.conv_pos}/{self.conv_pos_groups} groups")

    def hf_config(self, final_dim: int | None):
        """The equivalent ``transformers.HubertConfig`` (dropouts as HuBERT base; unused at inference)."""
        from transformers import HubertConfig

        return HubertConfig(
            hidden_size=self.encoder_embed_dim, num_hidden_layers=self.encoder_layers,
            num_attention_heads=self.encoder_attention_heads, intermediate_size=self.encoder_ffn_embed_dim,
            hidden_act=_ACTIVATIONS[self.activation_fn], feat_extract_activation="gelu",
            feat_extract_norm="group" if self.extractor_mode == "default" else "layer",
            conv_dim=[c for c, _, _ in self.conv_layers], conv_kernel=[k for _, k, _ in self.conv_layers],
            conv_stride=[s for _, _, s in self.conv_layers], conv_bias=self.conv_bias,
            num_conv_pos_embeddings=self.conv_pos, num_conv_pos_embedding_groups=self.conv_pos_groups,
            do_stable_layer_norm=self.layer_norm_first, feat_proj_layer_norm=True, layer_norm_eps=1e-5,
            classifier_proj_size=final_dim or 256, architectures=["HubertModel"])


def read_architecture(model_cfg: dict, task_cfg: dict, path: Path) -> HubertArchitecture:
    """The architecture from a checkpoint's model (and task) config, with fairseq's defaults for absent keys.

    Raises:
        UserError: a model this backend cannot run the same way (not HuBERT, another sample rate, input
            normalisation, conformer layers, batch-normed positional convolution, an unknown activation).
    """
    name = model_cfg.get("_name", model_cfg.get("arch"))
    if name is not None and not str(name).startswith(("hubert", "contentvec")):
        raise UserError(path, f"is a fairseq {name!r} model, not a HuBERT/ContentVec pre-trained encoder")
    if str(name).endswith("_ctc") or "w2v_path" in model_cfg:
        raise UserError(path, "is a fine-tuned (CTC) model; import the pre-trained HuBERT/ContentVec checkpoint")
    settings = {key: default if model_cfg.get(key) is None else model_cfg[key]
                for key, default in FAIRSEQ_DEFAULTS.items()}
    sample_rate = task_cfg.get("sample_rate", 16000)
    if int(sample_rate) != 16000:
        raise UserError(path, f"was trained on {sample_rate} Hz audio; the hubert backend feeds 16 kHz")
    if task_cfg.get("normalize", False):
        raise UserError(path, "expects each input waveform normalised to zero mean and unit variance "
                              "(task.normalize=true, as HuBERT large/xlarge), which content=hubert does not do")
    unsupported = {"layer_type": "transformer", "conv_pos_batch_norm": False, "pos_conv_depth": 1}
    for key, supported in unsupported.items():
        if settings[key] != supported:
            raise UserError(path, f"uses {key}={settings[key]!r}; only {key}={supported!r} HuBERT models are supported")
    if settings["activation_fn"] not in _ACTIVATIONS:
        raise UserError(path, f"uses activation_fn={settings['activation_fn']!r}; supported: {', '.join(_ACTIVATIONS)}")
    if settings["extractor_mode"] not in ("default", "layer_norm"):
        raise UserError(path, f"has an unknown extractor_mode={settings['extractor_mode']!r}")
    try:
        conv_layers = parse_conv_layers(settings["conv_feature_layers"])
        ints = {key: int(settings[key]) for key in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                                                     "encoder_attention_heads", "conv_pos", "conv_pos_groups")}
    except (TypeError, ValueError) as error:
        raise UserError(path, f"has a config that cannot be read ({error})") from None
    if ints["encoder_embed_dim"] % ints["encoder_attention_heads"]:
        raise UserError(path, f"its config does not fit together: encoder_embed_dim={ints['encoder_embed_dim']} is "
                              f"not divisible by encoder_attention_heads={ints['encoder_attention_heads']}")
    return HubertArchitecture(conv_layers=tuple(conv_layers), extractor_mode=str(settings["extractor_mode"]),
                              conv_bias=bool(settings["conv_bias"]), layer_norm_first=bool(settings["layer_norm_first"]),
                              activation_fn=str(settings["activation_fn"]), **ints)


def _rename(key: str) -> str | None:
    """The transformers name of the fairseq tensor ``key`` (None: not a HuBERT encoder tensor)."""
    if key == "mask_emb":
        return "masked_spec_embed"
    module, _, parameter = key.rpartition(".")
    if module == "encoder.pos_conv.0" and parameter in ("bias", "weight_g", "weight_v"):
        return f"encoder.pos_conv_embed.conv.{parameter}"
    if parameter not in ("weight", "bias"):
        return None
    if module in _MODULES:
        return f"{_MODULES[module]}.{parameter}"
    block = _BLOCK.fullmatch(module)
    if block:
        where, index, inner = block.groups()
        table = _LAYER_MODULES if where == "encoder.layers" else _CONV_MODULES
        if inner in table:
            return f"{where}.{index}.{table[inner]}.{parameter}"
    return None


def _expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``transformers.HubertModel`` built from ``config`` (on the meta device: no
    memory, no initialisation), with the weight-norm parametrisation under its classic names."""
    from transformers import HubertModel

    with torch.device("meta"):
        model = HubertModel(config)
    shapes = {}
    for key, value in model.state_dict().items():
        for new, old in _WEIGHT_NORM_NAMES.items():
            key = key.replace(new, old)
        shapes[key] = tuple(value.shape)
    return shapes


def convert_state(state: dict[str, torch.Tensor], arch: HubertArchitecture, config, path: Path
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """fairseq state dict -> (the tensors of ``model.safetensors``: HubertModel's + ``final_proj.*``, all
    float32 and contiguous; the names of the dropped training-only tensors).

    Raises:
        UserError: tensors that are not HuBERT's, or names/shapes that do not match the config.
    """
    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped, unknown = [], []
    for key, tensor in state.items():
        new = _rename(key)
        if new is not None:
            converted[new] = tensor.detach().to(torch.float32).contiguous()
            sources[new] = key
        elif _TRAINING_ONLY.match(key):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        hint = (" (the non-legacy ContentVec checkpoint? use checkpoint_best_legacy_500.pt)"
                if any("cond_layer_norm" in k or "spk" in k for k in unknown) else "")
        raise UserError(path, f"holds {len(unknown)} tensors a HuBERT model does not have, e.g. "
                              f"{', '.join(sorted(unknown)[:3])}{hint}")
    hidden = arch.encoder_embed_dim
    if "feature_projection.projection.weight" not in converted and arch.conv_layers[-1][0] == hidden:
        # fairseq has no post_extract_proj when the convolutions already give encoder_embed_dim channels
        converted["feature_projection.projection.weight"] = torch.eye(hidden)
        converted["feature_projection.projection.bias"] = torch.zeros(hidden)
    projection = {key: converted.pop(key) for key in ("final_proj.weight", "final_proj.bias") if key in converted}
    expected = _expected_shapes(config)
    mismatch = _first_mismatch(converted, expected, sources)
    if mismatch:
        raise UserError(path, f"its config does not match its weights: {mismatch} (config: {arch.summary()})")
    weight = projection.get("final_proj.weight")
    if weight is not None and (weight.dim() != 2 or weight.shape[1] != hidden
                               or projection.get("final_proj.bias", torch.zeros(weight.shape[0])).shape
                               != (weight.shape[0],)):
        raise UserError(path, f"its final_proj does not fit the model: weight {tuple(weight.shape)}, expected "
                              f"[final_dim, {hidden}] with a [final_dim] bias")
    return {**converted, **projection}, dropped


def _first_mismatch(converted: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]],
                   sources: dict[str, str]) -> str | None:
    """How the converted tensors differ from what the config implies (the first difference), or None.
    Tensors are named as in the fairseq file; ``sources`` maps transformers' names back to those."""
    missing = sorted(set(expected) - set(converted))
    extra = sorted(sources.get(key, key) for key in set(converted) - set(expected))
    if missing:
        return (f"the config implies {len(missing)} tensor(s) the file lacks (e.g. {', '.join(missing[:2])} in "
                "transformers' names)")
    if extra:
        return f"the file holds {len(extra)} tensor(s) the config does not describe (e.g. {', '.join(extra[:2])})"
    for key, shape in expected.items():
        if tuple(converted[key].shape) != shape:
            return f"{sources.get(key, key)} is {list(converted[key].shape)} in the file but {list(shape)} by the config"
    return None


def import_contentvec(src: str | Path, dst: str | Path, overwrite: bool = False) -> dict:
    """Convert the fairseq checkpoint ``src`` into the Hugging Face folder ``dst`` (written whole in a temporary
    folder and swapped in: on any error or a kill, the old ``dst`` stays whole or nothing appears; what killed
    imports left beside ``dst`` is removed first). Returns the ``import.json`` record.

    Raises:
        UserError: ``dst`` exists (without ``overwrite``), or the checkpoint is unusable (see
            :func:`read_fairseq_checkpoint`, :func:`read_architecture`, :func:`convert_state`).
    """
    from safetensors.torch import save

    from ai_singer.checkpoint import sha256_file

    src, dst = Path(src), Path(dst)
    restore_set_aside(dst)  # a folder an import killed mid-swap set aside still exists
    if dst.exists() and not overwrite:
        raise UserError(dst, "already exists", "choose another folder, or pass --overwrite to replace it")
    if dst.exists() and not dst.is_dir():
        raise UserError(dst, "is a file; the output is a folder")
    state, model_cfg, task_cfg = read_fairseq_checkpoint(src)
    arch = read_architecture(model_cfg, task_cfg, src)
    final_dim = state["final_proj.weight"].shape[0] if "final_proj.weight" in state else None
    config = arch.hf_config(final_dim)
    tensors, dropped = convert_state(state, arch, config, src)
    record = {
        "kind": "content encoder (transformers HubertModel) imported from a fairseq checkpoint",
        "source": {"file": src.name, "bytes": src.stat().st_size, "sha256": sha256_file(src),
                   "model": str(model_cfg.get("_name", model_cfg.get("arch", "hubert")))},
        "layers": arch.encoder_layers, "hidden_size": arch.encoder_embed_dim,
        "final_proj": list(tensors["final_proj.weight"].shape) if "final_proj.weight" in tensors else None,
        "dropped": sorted(dropped),
        "settings": {name: preset for name, preset in USUAL_SETTINGS.items()
                     if preset["layer"] <= arch.encoder_layers and (not preset["final_proj"] or final_dim)},
    }
    remove_stale_temporaries(dst.parent)
    with atomic_folder(dst) as folder:
        config.to_json_file(str(folder / "config.json"))
        (folder / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
        record["weights_sha256"] = sha256_file(folder / "model.safetensors")
        (folder / "import.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``contentvec`` sub-command's arguments."""
    parser.add_argument("src", type=Path, help="fairseq checkpoint: checkpoint_best_legacy_500.pt (ContentVec), "
                                               "hubert_base.pt, hubert_base_ls960.pt")
    parser.add_argument("dst", type=Path, help="output folder, e.g. pretrain/content/contentvec")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; prints what was written and how to use it."""
    record = import_contentvec(args.src, args.dst, overwrite=args.overwrite)
    projection = record["final_proj"]
    print(f"wrote {args.dst}: HubertModel, {record['layers']} layers x {record['hidden_size']}"
          + (f", final_proj {projection[1]} -> {projection[0]}" if projection else ", no final_proj"))
    for name, preset in record["settings"].items():
        print(f"  {name}: content=hubert content.path={args.dst} content.layer={preset['layer']} "
              f"content.final_proj={str(preset['final_proj']).lower()}")
    return 0
