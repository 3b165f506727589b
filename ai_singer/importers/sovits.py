"""so-vits-svc 4.0 / 4.1 and so-vits-svc-fork generators (+ discriminators) -> an ai_singer base.

    python -m ai_singer.importers sovits G_0.pth --config config.json [--discriminator D_0.pth] --name NAME

writes ``pretrain/NAME/`` (:func:`ai_singer.checkpoint.save_base`: safetensors, ``config.yaml`` with the
architecture, framing, content encoder, speakers and sha256) that ``train mode=finetune base=pretrain/NAME``
and ``convert`` use like any base.

Their generator is :class:`~ai_singer.model.SingerVAE` with four options set to so-vits-svc's conventions
(``volume_embedding`` ``none`` (4.0/fork) or ``linear`` (4.1 ``vol_embedding``), ``f0_coarse: mel``,
``nsf_source: sovits``, ``decoder_output_bias: true``) and the sizes so-vits-svc hard-codes (16 posterior
WaveNet layers, couplings of 4 layers with kernel 5, attention window 4, content conv kernel 5, 256 pitch
classes, 9 NSF harmonics: :data:`SOVITS_FIXED_FIELDS`, read from ``conf/model/sovits.yaml``). Only names and layouts differ (:func:`map_generator_key`):
old-style weight norm ``weight_g``/``weight_v`` become parametrisations, the relative position tables lose
their head axis, 4.1's ``emb_vol`` Linear becomes a 1x1 conv. The F0 decoder (``f0_decoder.*``, used only by
``auto_predict_f0``) is left out and counted in the base's ``imported_from`` record. Their discriminator is
ours at full width with one scale (``discriminators.0`` is the scale discriminator, ``1..5`` the periods
2, 3, 5, 7, 11).

Refused with a one-line :class:`SovitsImportError` (nothing written): decoders other than NSF-HiFiGAN
(fork ``type_`` istft variants, 4.1 ``nsf-snake-hifigan``), ``resblock "2"``, depthwise convs, transformer or
shared-parameter flows, spectral-norm discriminators, content encoders other than ContentVec/HuBERT
(``vec768l12`` / ``vec256l9``), and any file whose tensors do not fit its ``config.json``.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any, Mapping

from ai_singer.atomic import restore_set_aside
from ai_singer.errors import UserError
from ai_singer.importers.safe_load import load_checkpoint

#: The SingerVAEConfig fields so-vits-svc hard-codes (in its SynthesizerTrn, f0_to_coarse and NSF source),
#: read from conf/model/sovits.yaml; the other fields come from the imported config.json.
SOVITS_FIXED_FIELDS = (
    "f0_bins", "f0_min", "f0_max", "attention_window", "content_kernel_size", "posterior_layers",
    "posterior_kernel_size", "posterior_dilation_rate", "flow_layers", "flow_kernel_size", "flow_dilation_rate",
    "decoder", "ddsp_harmonics", "ddsp_noise_bands", "ddsp_envelope_bins", "ddsp_voicing", "harmonic_num",
    "sine_amp", "noise_std", "f0_coarse", "nsf_source", "decoder_output_bias", "voiced_embedding", "prior_input",
    "unvoiced_f0", "discriminator_periods", "discriminator_scales", "discriminator_width")
#: Content encoders so-vits-svc 4.1 names in ``model.speech_encoder`` that our ``hubert`` backend reads
#: (a ContentVec checkpoint converted by ``python -m ai_singer.importers contentvec``): dim, layer, final_proj.
CONTENT_ENCODERS = {"vec768l12": (768, 12, False), "vec256l9": (256, 9, True)}
#: so-vits-svc's training segment in samples (its config templates' ``train.segment_size``), for a config
#: without a ``train`` section.
SOVITS_SEGMENT_SIZE = 10240

#: (pattern, replacement) on so-vits-svc generator keys, first match wins; ``None`` drops the key.
_GENERATOR_KEYS: list[tuple[str, str | None]] = [
    (r"^f0_decoder\.", None),
    (r"^emb_g\.", "speaker_embedding."),
    (r"^pre\.", "prior_encoder.content_proj."),
    (r"^emb_uv\.", "prior_encoder.voiced_embedding."),
    (r"^emb_vol\.", "prior_encoder.volume_proj."),
    (r"^enc_p\.f0_emb\.", "prior_encoder.f0_embedding."),
    (r"^enc_p\.proj\.", "prior_encoder.out_proj."),
    (r"^enc_p\.enc_\.attn_layers\.(\d+)\.conv_q\.", r"prior_encoder.encoder.layers.\1.attention.query_proj."),
    (r"^enc_p\.enc_\.attn_layers\.(\d+)\.conv_k\.", r"prior_encoder.encoder.layers.\1.attention.key_proj."),
    (r"^enc_p\.enc_\.attn_layers\.(\d+)\.conv_v\.", r"prior_encoder.encoder.layers.\1.attention.value_proj."),
    (r"^enc_p\.enc_\.attn_layers\.(\d+)\.conv_o\.", r"prior_encoder.encoder.layers.\1.attention.out_proj."),
    (r"^enc_p\.enc_\.attn_layers\.(\d+)\.emb_rel_k$", r"prior_encoder.encoder.layers.\1.attention.relative_key"),
    (r"^enc_p\.enc_\.attn_layers\.(\d+)\.emb_rel_v$", r"prior_encoder.encoder.layers.\1.attention.relative_value"),
    (r"^enc_p\.enc_\.norm_layers_1\.(\d+)\.gamma$", r"prior_encoder.encoder.layers.\1.attention_norm.norm.weight"),
    (r"^enc_p\.enc_\.norm_layers_1\.(\d+)\.beta$", r"prior_encoder.encoder.layers.\1.attention_norm.norm.bias"),
    (r"^enc_p\.enc_\.ffn_layers\.(\d+)\.conv_1\.", r"prior_encoder.encoder.layers.\1.feed_forward.conv_in."),
    (r"^enc_p\.enc_\.ffn_layers\.(\d+)\.conv_2\.", r"prior_encoder.encoder.layers.\1.feed_forward.conv_out."),
    (r"^enc_p\.enc_\.norm_layers_2\.(\d+)\.gamma$", r"prior_encoder.encoder.layers.\1.feed_forward_norm.norm.weight"),
    (r"^enc_p\.enc_\.norm_layers_2\.(\d+)\.beta$", r"prior_encoder.encoder.layers.\1.feed_forward_norm.norm.bias"),
    (r"^enc_q\.pre\.", "posterior_encoder.input_proj."),
    (r"^enc_q\.proj\.", "posterior_encoder.out_proj."),
    (r"^enc_q\.enc\.", "posterior_encoder.wavenet."),
    (r"^flow\.flows\.(\d+)\.pre\.", "flow.couplings.{coupling}.input_proj."),
    (r"^flow\.flows\.(\d+)\.post\.", "flow.couplings.{coupling}.out_proj."),
    (r"^flow\.flows\.(\d+)\.enc\.", "flow.couplings.{coupling}.wavenet."),
    (r"^dec\.conv_pre\.", "decoder.input_conv."),
    (r"^dec\.cond\.", "decoder.speaker_proj."),
    (r"^dec\.ups\.", "decoder.upsamplers."),
    (r"^dec\.noise_convs\.", "decoder.source_convs."),
    (r"^dec\.resblocks\.(\d+)\.convs1\.", r"decoder.resblocks.\1.dilated_convs."),
    (r"^dec\.resblocks\.(\d+)\.convs2\.", r"decoder.resblocks.\1.convs."),
    (r"^dec\.conv_post\.", "decoder.output_conv."),
    (r"^dec\.m_source\.l_linear\.", "decoder.source.merge."),
]
#: Inside a WaveNet (posterior encoder and flow couplings).
_WAVENET_KEYS = [(r"\.in_layers\.", ".dilated_convs."), (r"\.res_skip_layers\.", ".res_skip_convs."),
                 (r"\.cond_layer\.", ".speaker_proj.")]
#: Old-style ``torch.nn.utils.weight_norm`` -> ``torch.nn.utils.parametrizations.weight_norm``.
_WEIGHT_NORM = [(r"\.weight_g$", ".parametrizations.weight.original0"),
                (r"\.weight_v$", ".parametrizations.weight.original1")]


class SovitsImportError(UserError):
    """A so-vits-svc file or config that cannot be imported; the message names the file."""


# ------------------------------------------------------------------------------------------ config

def read_config(path: str | Path) -> dict:
    """so-vits-svc's ``config.json`` as a dict with ``data`` and ``model`` sections."""
    path = Path(path)
    if not path.is_file():
        raise SovitsImportError(path, "no such file (the config.json that came with the G_*.pth file)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SovitsImportError(path, f"not a JSON file ({error})") from None
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("data", "model")):
        raise SovitsImportError(path, "not a so-vits-svc config.json: it needs the sections \"data\" and \"model\"")
    return config


def _refuse_unsupported(model: Mapping[str, Any], where: Path) -> None:
    unsupported = []
    if model.get("type_", "hifi-gan") != "hifi-gan":
        unsupported.append(f"type_ {model.get('type_')!r} (only the NSF-HiFiGAN decoder \"hifi-gan\")")
    if model.get("vocoder_name", "nsf-hifigan") != "nsf-hifigan":
        unsupported.append(f"vocoder_name {model.get('vocoder_name')!r} (only \"nsf-hifigan\")")
    if str(model.get("resblock", "1")) != "1":
        unsupported.append(f"resblock {model.get('resblock')!r} (only \"1\")")
    for flag in ("use_depthwise_conv", "use_transformer_flow", "flow_share_parameter", "use_spectral_norm"):
        if model.get(flag):
            unsupported.append(f"{flag}: true")
    if unsupported:
        raise SovitsImportError(where, "uses so-vits-svc options ai_singer's model does not have: "
                                       + "; ".join(unsupported))


def content_encoder_record(config: Mapping[str, Any], where: Path, content_path: str) -> dict:
    """The base's ``content_encoder`` record: ``{name: hubert, dim, path, layer, final_proj}``.

    4.1 names it (``model.speech_encoder``); 4.0 and the fork imply it by ``ssl_dim`` (768: layer 12;
    256: layer 9 + ``final_proj``, the fork's ``contentvec_final_proj``)."""
    model, data = config["model"], config["data"]
    dim = model.get("ssl_dim")
    encoder = model.get("speech_encoder")
    if encoder is None:
        encoder = {768: "vec768l12", 256: "vec256l9"}.get(dim)
        if encoder is None:
            raise SovitsImportError(where, f"ssl_dim {dim!r}: expected 768 (ContentVec layer 12) or 256 "
                                           "(ContentVec layer 9 + final_proj)")
        if "contentvec_final_proj" in data and bool(data["contentvec_final_proj"]) != (dim == 256):
            raise SovitsImportError(where, f"ssl_dim {dim} does not go with contentvec_final_proj "
                                           f"{data['contentvec_final_proj']} (768 without final_proj, 256 with it)")
    if encoder not in CONTENT_ENCODERS:
        raise SovitsImportError(where, f"speech_encoder {encoder!r}: ai_singer reads ContentVec/HuBERT only "
                                       f"({', '.join(CONTENT_ENCODERS)})")
    enc_dim, layer, final_proj = CONTENT_ENCODERS[encoder]
    if dim is not None and dim != enc_dim:
        raise SovitsImportError(where, f"ssl_dim {dim} does not match speech_encoder {encoder} ({enc_dim})")
    return {"name": "hubert", "dim": enc_dim, "path": content_path, "layer": layer, "final_proj": final_proj}


def model_config(config: Mapping[str, Any], where: Path) -> dict:
    """``SingerVAEConfig`` fields for so-vits-svc's ``config.json`` (raises :class:`SovitsImportError`)."""
    from ai_singer.config import conf_group
    from ai_singer.model import SingerVAEConfig

    layout = conf_group("model", "sovits")
    model, data = config["model"], config["data"]
    _refuse_unsupported(model, where)
    try:
        hop = int(data["hop_length"])
        fields = {
            "sample_rate": int(data["sampling_rate"]), "hop_length": hop, "n_fft": int(data["filter_length"]),
            "win_length": int(data["win_length"]), "content_dim": int(model["ssl_dim"]),
            "n_speakers": int(model["n_speakers"]), "gin_channels": int(model["gin_channels"]),
            "inter_channels": int(model["inter_channels"]), "hidden_channels": int(model["hidden_channels"]),
            "filter_channels": int(model["filter_channels"]), "n_heads": int(model["n_heads"]),
            "n_layers": int(model["n_layers"]), "kernel_size": int(model["kernel_size"]),
            "p_dropout": float(model["p_dropout"]),
            "volume_embedding": "linear" if model.get("vol_embedding") else "none",
            "n_flows": int(model.get("n_flow_layer", 4)),
            "upsample_initial_channel": int(model["upsample_initial_channel"]),
            "upsample_rates": list(model["upsample_rates"]),
            "upsample_kernel_sizes": list(model["upsample_kernel_sizes"]),
            "resblock_kernel_sizes": list(model["resblock_kernel_sizes"]),
            "resblock_dilation_sizes": [list(d) for d in model["resblock_dilation_sizes"]],
            "segment_frames": max(1, int(config.get("train", {}).get("segment_size", SOVITS_SEGMENT_SIZE)) // hop),
            **{name: layout[name] for name in SOVITS_FIXED_FIELDS},
        }
        return SingerVAEConfig(**fields).to_dict()
    except KeyError as error:
        raise SovitsImportError(where, f"the config lacks {error.args[0]!r} (a so-vits-svc 4.x config.json has it "
                                       "in \"data\" or \"model\")") from None
    except (TypeError, ValueError) as error:
        raise SovitsImportError(where, f"not a usable so-vits-svc model config: {error}") from None


def speaker_names(config: Mapping[str, Any], n_speakers: int) -> list[str]:
    """Names by speaker id from the config's ``spk`` map; ids without a name are ``speaker_<id>``."""
    names = [f"speaker_{i}" for i in range(n_speakers)]
    for name, index in (config.get("spk") or {}).items():
        if isinstance(index, int) and 0 <= index < n_speakers:
            names[index] = str(name)
    return names


# ------------------------------------------------------------------------------------------ weights

def map_generator_key(key: str) -> str | None:
    """Our name for a so-vits-svc generator tensor; ``None`` for the F0 decoder (not part of our model).
    Unknown keys come back unchanged (the strict shape check then reports them)."""
    for pattern, replacement in _GENERATOR_KEYS:
        match = re.match(pattern, key)
        if not match:
            continue
        if replacement is None:
            return None
        if "{coupling}" in replacement:  # flows alternate coupling, flip: coupling i is flows.2i
            replacement = replacement.format(coupling=int(match.group(1)) // 2)
            key = replacement + key[match.end():]
        else:
            key = re.sub(pattern, replacement, key, count=1)
        break
    if key.startswith(("posterior_encoder.wavenet.", "flow.couplings.")):
        for pattern, replacement in _WAVENET_KEYS:
            key = re.sub(pattern, replacement, key)
    for pattern, replacement in _WEIGHT_NORM:
        key = re.sub(pattern, replacement, key)
    return key


def map_discriminator_key(key: str) -> str:
    """``discriminators.0`` (scale) -> ``scale_discriminators.0``; ``discriminators.N`` -> ``period_discriminators.N-1``;
    ``conv_post`` -> ``output_conv``; old-style weight norm -> parametrisations."""
    match = re.match(r"^discriminators\.(\d+)\.", key)
    if match:
        index = int(match.group(1))
        prefix = "scale_discriminators.0." if index == 0 else f"period_discriminators.{index - 1}."
        key = prefix + key[match.end():]
    key = key.replace(".conv_post.", ".output_conv.")
    for pattern, replacement in _WEIGHT_NORM:
        key = re.sub(pattern, replacement, key)
    return key


def state_dict_of(payload: Any, path: Path, what: str) -> dict:
    """The tensors of a so-vits-svc checkpoint (``{"model": state_dict, "iteration", "optimizer",
    "learning_rate"}``, or a bare state dict), with a leading ``module.`` (DataParallel) removed."""
    import torch

    state = payload.get("model") if isinstance(payload, dict) and isinstance(payload.get("model"), dict) else payload
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(payload)[:6] if isinstance(payload, dict) else type(payload).__name__
        hint = " (it looks like an RVC model: \"weight\" and \"config\"; use `ai-singer import rvc`)" if (
            isinstance(payload, dict) and "weight" in payload and "config" in payload) else ""
        raise SovitsImportError(path, f"not {what}: expected {{\"model\": state dict of tensors, ...}}, found "
                                      f"{keys}{hint}")
    if all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module."):]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def convert_generator(state: Mapping[str, Any], path: Path) -> tuple[dict, dict]:
    """so-vits-svc generator tensors -> (our state dict, what was left out: ``{"f0_decoder": n_params}``)."""
    if "enc_p.emb_phone.weight" in state:
        raise SovitsImportError(path, "is an RVC generator, not a so-vits-svc one: use `ai-singer import rvc`")
    if "emb_g.weight" not in state:
        kind = " (it is a discriminator: pass it with --discriminator)" if any(
            k.startswith("discriminators.") for k in state) else ""
        raise SovitsImportError(path, f"not a so-vits-svc generator: it has no emb_g.weight{kind}")
    out, dropped = {}, {}
    for key, value in state.items():
        new = map_generator_key(key)
        if new is None:
            dropped["f0_decoder"] = dropped.get("f0_decoder", 0) + value.numel()
            continue
        if new.endswith(("relative_key", "relative_value")) and value.dim() == 3:
            if value.shape[0] != 1:
                raise SovitsImportError(path, f"{key} has per-head tables {tuple(value.shape)}; ai_singer's "
                                              "attention shares them across heads (heads_share)")
            value = value[0]
        if new.startswith("prior_encoder.volume_proj.weight") and value.dim() == 2:
            value = value.unsqueeze(-1)  # Linear(1, hidden) -> Conv1d(1, hidden, 1)
        out[new] = value.float()
    return out, dropped


def _check_fits(module, state: Mapping[str, Any], path: Path, config_path: Path) -> None:
    from ai_singer.checkpoint import state_dict_diff

    diff = state_dict_diff(module.state_dict(), state, max_items=4)
    if diff:
        raise SovitsImportError(path, f"its tensors do not match {config_path} (another model's config?): "
                                      + "; ".join(line.strip() for line in diff.splitlines() if line.strip()))


# ------------------------------------------------------------------------------------------ import

def import_sovits(generator: str | Path, config: str | Path, name_dir: str | Path,
                  discriminator: str | Path | None, content_path: str, overwrite: bool) -> dict:
    """Import and write the base folder ``name_dir``; returns a summary (the base config's
    ``imported_from`` record plus ``seconds``). Everything is read and checked before anything is written."""
    import torch

    from ai_singer import checkpoint
    from ai_singer.model import SingerVAE
    from ai_singer.model.discriminator import Discriminator

    started = time.perf_counter()
    generator, config_path, name_dir = Path(generator), Path(config), Path(name_dir)
    restore_set_aside(name_dir)  # a base an import killed mid-swap set aside still exists
    if name_dir.exists() and not overwrite:
        raise SovitsImportError(name_dir, "already exists; choose another --name or pass --overwrite")
    raw_config = read_config(config_path)
    fields = model_config(raw_config, config_path)
    content = content_encoder_record(raw_config, config_path, content_path)

    what = "a so-vits-svc generator (G_*.pth)"
    payload = load_checkpoint(generator, {}, what)
    g_state, dropped = convert_generator(state_dict_of(payload, generator, what), generator)
    model = SingerVAE(fields)
    _check_fits(model, g_state, generator, config_path)
    iteration = payload.get("iteration") if isinstance(payload, dict) else None
    del payload

    d_state = None
    if discriminator is not None:
        discriminator = Path(discriminator)
        what = "a so-vits-svc discriminator (D_*.pth)"
        d_raw = state_dict_of(load_checkpoint(discriminator, {}, what), discriminator, what)
        if "emb_g.weight" in d_raw:
            raise SovitsImportError(discriminator, "is a generator (it has emb_g.weight), not a discriminator")
        d_state = {map_discriminator_key(k): v.float() for k, v in d_raw.items()}
        _check_fits(Discriminator.from_config(model.config), d_state, discriminator, config_path)

    with torch.no_grad():
        model.load_state_dict(g_state, strict=True)
    record = {
        "format": "so-vits-svc 4.1" if "speech_encoder" in raw_config["model"] else "so-vits-svc 4.0 / so-vits-svc-fork",
        "generator": str(generator), "generator_sha256": checkpoint.sha256_file(generator),
        "config": str(config_path), "iteration": int(iteration) if isinstance(iteration, int) else None,
        "discriminator": str(discriminator) if discriminator is not None else None,
        "left_out": {part: f"{n} parameters (auto_predict_f0 only)" for part, n in dropped.items()},
    }
    base_config = {"model": fields, "steps": record["iteration"], "content_encoder": content,
                   "sample_rate": fields["sample_rate"], "hop_length": fields["hop_length"],
                   "speakers": speaker_names(raw_config, fields["n_speakers"]), "imported_from": record}
    checkpoint.save_base(name_dir, model.state_dict(), d_state, base_config)  # all files appear together, or none
    return {**record, "seconds": time.perf_counter() - started}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``sovits`` sub-command's arguments (defaults of the folders: conf/)."""
    from ai_singer.importers.base_arguments import add_base_output_arguments

    parser.add_argument("generator", type=Path, help="the generator checkpoint, e.g. G_0.pth")
    parser.add_argument("--config", required=True, type=Path, help="its config.json")
    parser.add_argument("--discriminator", type=Path, help="the discriminator checkpoint (D_0.pth), for "
                                                           "fine-tuning with a trained discriminator")
    add_base_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command (a :class:`~ai_singer.errors.UserError` goes to the dispatcher: one line, exit 2)."""
    target = args.pretrain_dir / args.name
    summary = import_sovits(args.generator, args.config, target, args.discriminator, args.content_path,
                            args.overwrite)
    left = ("; left out: " + ", ".join(f"{k} ({v})" for k, v in summary["left_out"].items())
            if summary["left_out"] else "")
    print(f"wrote {target} from {args.generator} ({summary['format']}, iteration {summary['iteration']}) in "
          f"{summary['seconds']:.1f} s{left}")
    print(f"  fine-tune: ai-singer train mode=finetune singer=<name> base={target} peft=lora")
    return 0
