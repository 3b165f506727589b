"""RVC (Retrieval-based-Voice-Conversion) v1/v2 bases and singer models -> an ai_singer base.

    python -m ai_singer.importers rvc f0G40k.pth [--discriminator f0D40k.pth] --name NAME     # a base
    python -m ai_singer.importers rvc alice.pth --base pretrain/NAME --name alice-full         # a singer model

writes ``pretrain/NAME/`` (:func:`ai_singer.checkpoint.save_base`) that ``train mode=finetune`` and ``convert``
use like any base, and that ``extract-adapter`` turns into a LoRA adapter when it holds a singer.

Two kinds of RVC file are read (pickles, loaded with :func:`~ai_singer.importers.safe_load.load_checkpoint`):

* a base or training checkpoint (``pretrained_v2/f0G40k.pth``, ``G_2333333.pth``): ``{"model": state dict}``
  (+ ``iteration``, ``optimizer``, ...), often float16, no config: the layout is recognised from the tensors'
  shapes among RVC's published configs (:data:`RVC_FRAMINGS`: v1 32k/40k/48k, v2 32k/40k/48k; ``--sample-rate``
  picks one when the shapes do not tell);
* a singer model as RVC exports it (``assets/weights/<name>.pth``): ``{"weight": state dict without the
  posterior encoder, "config": [spec_channels, segment_size, inter, hidden, filter, n_heads, n_layers,
  kernel_size, p_dropout, resblock, resblock_kernel_sizes, resblock_dilation_sizes, upsample_rates,
  upsample_initial_channel, upsample_kernel_sizes, spk_embed_dim, gin_channels, sampling_rate], "sr", "f0",
  "version", "info"}``. RVC strips the training-only posterior encoder (``enc_q``) from these files, so the
  import takes it from ``--base`` (the imported base the singer was fine-tuned from); conversion never runs it.

RVC's generator is :class:`~ai_singer.model.SingerVAE` with the so-vits-svc conventions (``f0_coarse: mel``,
``nsf_source: sovits``, ``volume_embedding: none``) and three of its own: ``voiced_embedding: false`` (no
voicing embedding), ``prior_input: scaled_leaky_relu`` (its TextEncoder multiplies the summed content and
pitch embeddings by ``sqrt(hidden)`` and applies LeakyReLU(0.1)) and ``unvoiced_f0: zero`` (its pipeline feeds
0 Hz in unvoiced frames: pitch class 1 and no sine there), plus the sizes it hard-codes (content through a
Linear = kernel 1, attention window 10, couplings of 3 WaveNet layers, one sine, no bias on the output conv:
:data:`RVC_FIXED_FIELDS`, read from ``conf/model/rvc.yaml``). RVC's ``SineGen`` accumulates the phase at frame
rate and interpolates it, but only to find where the phase wraps; the wraps are whole cycles, so its sine is
so-vits-svc's (``sin(2 pi sum_{i<=n} f0_i / sr)``) up to float rounding. Its coarse pitch (``get_f0`` of
its pipeline) is so-vits-svc's mel scale with ``np.rint``. Names: ``enc_p.emb_phone`` (a Linear) becomes the
kernel-1 ``content_proj``, ``enc_p.emb_pitch`` the ``f0_embedding``, ``enc_p.encoder`` the transformer; the
rest are so-vits-svc's names (:func:`ai_singer.importers.sovits.map_generator_key`). Its decoder's first and
last convs have no weight norm; ours do, so they are stored as weight norm's (g = |W|, v = W), the same
weights. Its discriminator is ours with the periods 2, 3, 5, 7, 11, 17, 23, 37 (v2) or 2 ... 17 (v1).

Refused with a one-line :class:`RvcImportError` (nothing written): models without pitch guidance (``f0: 0``,
``*_nono``), ``resblock "2"``, content dims other than 768 (v2) / 256 (v1), so-vits-svc files (use ``import
sovits``), and any file whose tensors do not fit its layout.
"""
from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping

from ai_singer.atomic import restore_set_aside
from ai_singer.errors import UserError
from ai_singer.importers.safe_load import load_checkpoint
from ai_singer.importers.sovits import CONTENT_ENCODERS, map_discriminator_key, map_generator_key

#: The SingerVAEConfig fields RVC hard-codes, read from conf/model/rvc.yaml; the others come from the file.
RVC_FIXED_FIELDS = (
    "f0_bins", "f0_min", "f0_max", "attention_window", "content_kernel_size", "volume_embedding", "f0_coarse",
    "voiced_embedding", "prior_input", "unvoiced_f0", "posterior_layers",
    "posterior_kernel_size", "posterior_dilation_rate", "n_flows", "flow_layers", "flow_kernel_size",
    "flow_dilation_rate", "decoder", "ddsp_harmonics", "ddsp_noise_bands", "ddsp_envelope_bins", "ddsp_voicing",
    "harmonic_num", "sine_amp", "noise_std", "nsf_source", "decoder_output_bias", "discriminator_scales",
    "discriminator_width")
#: RVC's published layouts (its configs/v1|v2/<rate>.json; v2 40k uses v1/40k.json): (version, rate) ->
#: sample rate, filter_length (= win_length), upsample rates and kernels, training segment in samples.
RVC_FRAMINGS: dict[tuple[str, str], dict[str, Any]] = {
    ("v1", "32k"): {"sampling_rate": 32000, "filter_length": 1024, "upsample_rates": [10, 4, 2, 2, 2],
                    "upsample_kernel_sizes": [16, 16, 4, 4, 4], "segment_size": 12800},
    ("v1", "40k"): {"sampling_rate": 40000, "filter_length": 2048, "upsample_rates": [10, 10, 2, 2],
                    "upsample_kernel_sizes": [16, 16, 4, 4], "segment_size": 12800},
    ("v1", "48k"): {"sampling_rate": 48000, "filter_length": 2048, "upsample_rates": [10, 6, 2, 2, 2],
                    "upsample_kernel_sizes": [16, 16, 4, 4, 4], "segment_size": 11520},
    ("v2", "32k"): {"sampling_rate": 32000, "filter_length": 1024, "upsample_rates": [10, 8, 2, 2],
                    "upsample_kernel_sizes": [20, 16, 4, 4], "segment_size": 12800},
    ("v2", "40k"): {"sampling_rate": 40000, "filter_length": 2048, "upsample_rates": [10, 10, 2, 2],
                    "upsample_kernel_sizes": [16, 16, 4, 4], "segment_size": 12800},
    ("v2", "48k"): {"sampling_rate": 48000, "filter_length": 2048, "upsample_rates": [12, 10, 2, 2],
                    "upsample_kernel_sizes": [24, 20, 4, 4], "segment_size": 17280},
}
#: Discriminator periods: v1's MultiPeriodDiscriminator, v2's MultiPeriodDiscriminatorV2 (plus the scale one).
RVC_PERIODS = {"v1": [2, 3, 5, 7, 11, 17], "v2": [2, 3, 5, 7, 11, 17, 23, 37]}
#: Content dim -> (version, content encoder of :data:`~ai_singer.importers.sovits.CONTENT_ENCODERS`).
RVC_CONTENT = {768: ("v2", "vec768l12"), 256: ("v1", "vec256l9")}
#: The order of the ``config`` list in RVC's exported singer models (its process_ckpt ``savee``).
SINGER_CONFIG_FIELDS = (
    "spec_channels", "segment_size", "inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers",
    "kernel_size", "p_dropout", "resblock", "resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates",
    "upsample_initial_channel", "upsample_kernel_sizes", "spk_embed_dim", "gin_channels", "sampling_rate")
#: RVC's own names -> so-vits-svc's (then :func:`~ai_singer.importers.sovits.map_generator_key`) or ours.
_RVC_KEYS = [(r"^enc_p\.emb_phone\.", "prior_encoder.content_proj."),
             (r"^enc_p\.emb_pitch\.", "prior_encoder.f0_embedding."),
             (r"^enc_p\.encoder\.", "enc_p.enc_.")]
_SAMPLE_RATES = {"32k": 32000, "40k": 40000, "48k": 48000}


class RvcImportError(UserError):
    """An RVC file that cannot be imported; the message names the file."""


# ------------------------------------------------------------------------------------------ reading

def read_payload(path: Path) -> tuple[str, dict, dict]:
    """``(kind, generator tensors, the file's other fields)``, kind ``"singer"`` (an exported model with
    ``weight`` and ``config``) or ``"checkpoint"`` (``{"model": state dict, ...}``, a base or training state)."""
    import torch

    payload = load_checkpoint(path, {}, "an RVC model (.pth)")
    if isinstance(payload, dict) and isinstance(payload.get("weight"), dict):
        kind, state = "singer", payload["weight"]
    elif isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        kind, state = "checkpoint", payload["model"]
    else:
        found = sorted(map(str, payload))[:6] if isinstance(payload, dict) else type(payload).__name__
        raise RvcImportError(path, f"not an RVC model: expected {{\"weight\": tensors, \"config\": [...]}} (an "
                                   f"exported singer) or {{\"model\": tensors}} (a base such as f0G40k.pth), "
                                   f"found {found}")
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RvcImportError(path, "not an RVC model: its weights are not a dict of tensors")
    state = {str(k)[len("module."):] if str(k).startswith("module.") else str(k): v for k, v in state.items()}
    if "pre.weight" in state or any(k.startswith("enc_p.enc_.") for k in state):
        raise RvcImportError(path, "is a so-vits-svc generator, not an RVC model: use `ai-singer import sovits`")
    if any(k.startswith("discriminators.") for k in state):
        raise RvcImportError(path, "is a discriminator (f0D*.pth): pass it with --discriminator beside the "
                                   "generator (f0G*.pth)")
    if "emb_g.weight" not in state or "enc_p.emb_phone.weight" not in state:
        raise RvcImportError(path, "not an RVC generator: it has no emb_g.weight / enc_p.emb_phone.weight")
    if "enc_p.emb_pitch.weight" not in state or payload.get("f0", 1) in (0, "0"):
        raise RvcImportError(path, "is an RVC model without pitch guidance (f0 0, *_nono): ai_singer's model "
                                   "always conditions on F0; use a model trained with pitch (f0G*.pth)")
    extra = {k: v for k, v in payload.items() if k not in ("weight", "model", "optimizer")}
    return kind, state, extra


def _version(state: Mapping[str, Any], path: Path) -> tuple[str, str]:
    dim = int(state["enc_p.emb_phone.weight"].shape[1])
    if dim not in RVC_CONTENT:
        raise RvcImportError(path, f"content dim {dim} (enc_p.emb_phone): RVC v2 reads 768, v1 256")
    return RVC_CONTENT[dim]


def _framing_from_shapes(state: Mapping[str, Any], version: str, sample_rate: str | None, path: Path) -> str:
    """The key of :data:`RVC_FRAMINGS` whose upsampler kernels (``dec.ups.N``) and spectrogram size
    (``enc_q.pre``) fit the tensors; ``sample_rate`` ("40k") when given must be one of them."""
    kernels = [int(state[k].shape[-1]) for k in sorted(
        (k for k in state if re.match(r"^dec\.ups\.\d+\.weight(_v)?$", k)), key=lambda k: int(k.split(".")[2]))]
    spec = int(state["enc_q.pre.weight"].shape[1]) if "enc_q.pre.weight" in state else None
    fits = [rate for (v, rate), f in RVC_FRAMINGS.items() if v == version and f["upsample_kernel_sizes"] == kernels
            and spec in (None, f["filter_length"] // 2 + 1)]
    if sample_rate is not None:
        if (version, sample_rate) not in RVC_FRAMINGS:
            raise RvcImportError(path, f"--sample-rate {sample_rate}: RVC {version} has "
                                       f"{', '.join(r for v, r in RVC_FRAMINGS if v == version)}")
        if sample_rate not in fits:
            raise RvcImportError(path, f"its tensors do not match RVC {version} {sample_rate} (upsampler kernels "
                                       f"{kernels}, spectrogram bins {spec}; another rate's file?)")
        return sample_rate
    if len(fits) != 1:
        raise RvcImportError(path, f"cannot tell its sample rate from its tensors (upsampler kernels {kernels}, "
                                   f"RVC {version}): pass --sample-rate 32k, 40k or 48k")
    return fits[0]


def read_config(path: Path, version: str) -> dict[str, Any]:
    """RVC's training ``config.json`` (``configs/v2/48k.json``, ``logs/<experiment>/config.json``) as the
    settings :func:`rvc_config` returns."""
    import json

    if not path.is_file():
        raise RvcImportError(path, "no such file (RVC's training config.json of this checkpoint)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RvcImportError(path, f"not a JSON file ({error})") from None
    try:
        data, model = config["data"], config["model"]
        rates = [int(r) for r in model["upsample_rates"]]
        if int(data["hop_length"]) != math.prod(rates) or int(data["win_length"]) != int(data["filter_length"]):
            raise RvcImportError(path, f"hop_length {data['hop_length']} must equal the product of upsample_rates "
                                       f"{rates} and win_length filter_length (as in RVC's configs)")
        return {"spec_channels": int(data["filter_length"]) // 2 + 1,
                "segment_size": int(config["train"]["segment_size"]) // int(data["hop_length"]),
                **{k: model[k] for k in SINGER_CONFIG_FIELDS[2:-1]}, "sampling_rate": int(data["sampling_rate"]),
                "version": version}
    except (KeyError, TypeError) as error:
        raise RvcImportError(path, f"not an RVC config.json: it lacks {error} (RVC's configs have \"data\", "
                                   "\"model\" and \"train\" sections)") from None


def rvc_config(kind: str, state: Mapping[str, Any], extra: Mapping[str, Any], path: Path,
               sample_rate: str | None, config_path: Path | None = None) -> dict[str, Any]:
    """RVC's model settings by its config names (``inter_channels`` ... ``sampling_rate``, ``segment_size``
    in frames, ``version``): from an exported singer's ``config`` list; for a checkpoint from its training
    ``config_path`` when given, else from the RVC layout its tensors fit (sizes RVC's configs share:
    conf/model/rvc.yaml)."""
    from ai_singer.config import conf_group

    version, _ = _version(state, path)
    if kind == "checkpoint" and config_path is not None:
        return read_config(config_path, version)
    if kind == "singer":
        values = extra.get("config")
        if not isinstance(values, (list, tuple)) or len(values) != len(SINGER_CONFIG_FIELDS):
            raise RvcImportError(path, f"its \"config\" is not RVC's list of {len(SINGER_CONFIG_FIELDS)} model "
                                       f"settings (found {type(values).__name__} of length "
                                       f"{len(values) if isinstance(values, (list, tuple)) else '-'})")
        config = dict(zip(SINGER_CONFIG_FIELDS, values))
        rate = config["sampling_rate"]
        config["sampling_rate"] = _SAMPLE_RATES.get(rate, rate) if isinstance(rate, str) else rate
        declared = str(extra.get("version", "v1"))
        if declared != version:
            raise RvcImportError(path, f"says version {declared} but its content projection reads "
                                       f"{state['enc_p.emb_phone.weight'].shape[1]}-dim features ({version})")
        return {**config, "version": version}
    layout = conf_group("model", "rvc")
    framing = RVC_FRAMINGS[(version, _framing_from_shapes(state, version, sample_rate, path))]
    hop = math.prod(framing["upsample_rates"])
    return {"spec_channels": framing["filter_length"] // 2 + 1, "segment_size": framing["segment_size"] // hop,
            **{k: layout[k] for k in ("inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers",
                                      "kernel_size", "p_dropout", "resblock_kernel_sizes", "resblock_dilation_sizes",
                                      "upsample_initial_channel", "gin_channels")},
            "resblock": "1", "upsample_rates": framing["upsample_rates"],
            "upsample_kernel_sizes": framing["upsample_kernel_sizes"],
            "spk_embed_dim": int(state["emb_g.weight"].shape[0]), "sampling_rate": framing["sampling_rate"],
            "version": version}


def model_config(config: Mapping[str, Any], state: Mapping[str, Any], path: Path) -> dict:
    """``SingerVAEConfig`` fields for RVC settings (:func:`rvc_config`) and its tensors (content dim, speakers)."""
    from ai_singer.config import conf_group
    from ai_singer.model import SingerVAEConfig

    if str(config["resblock"]) != "1":
        raise RvcImportError(path, f"resblock {config['resblock']!r}: ai_singer's decoder has HiFi-GAN's "
                                   "resblock \"1\" only")
    layout = conf_group("model", "rvc")
    try:
        n_fft = (int(config["spec_channels"]) - 1) * 2
        rates = [int(r) for r in config["upsample_rates"]]
        fields = {
            "sample_rate": int(config["sampling_rate"]), "hop_length": math.prod(rates), "n_fft": n_fft,
            "win_length": n_fft, "content_dim": int(state["enc_p.emb_phone.weight"].shape[1]),
            # as RVC's own loader does: the speaker count is the table's, whatever the config says
            "n_speakers": int(state["emb_g.weight"].shape[0]), "gin_channels": int(config["gin_channels"]),
            "inter_channels": int(config["inter_channels"]), "hidden_channels": int(config["hidden_channels"]),
            "filter_channels": int(config["filter_channels"]), "n_heads": int(config["n_heads"]),
            "n_layers": int(config["n_layers"]), "kernel_size": int(config["kernel_size"]),
            "p_dropout": float(config["p_dropout"]),
            "upsample_initial_channel": int(config["upsample_initial_channel"]), "upsample_rates": rates,
            "upsample_kernel_sizes": list(config["upsample_kernel_sizes"]),
            "resblock_kernel_sizes": list(config["resblock_kernel_sizes"]),
            "resblock_dilation_sizes": [list(d) for d in config["resblock_dilation_sizes"]],
            "segment_frames": int(config["segment_size"]),
            "discriminator_periods": RVC_PERIODS[config["version"]],
            **{name: layout[name] for name in RVC_FIXED_FIELDS},
        }
        return SingerVAEConfig(**fields).to_dict()
    except (TypeError, ValueError) as error:
        raise RvcImportError(path, f"not a usable RVC model config: {error}") from None


def content_encoder_record(version: str, content_path: str) -> dict:
    """The base's ``content_encoder``: v2 ContentVec/HuBERT layer 12 (768), v1 layer 9 + final_proj (256)."""
    dim, layer, final_proj = CONTENT_ENCODERS[{"v2": "vec768l12", "v1": "vec256l9"}[version]]
    return {"name": "hubert", "dim": dim, "path": content_path, "layer": layer, "final_proj": final_proj}


# ------------------------------------------------------------------------------------------ weights

def map_rvc_key(key: str) -> str:
    """Our name for an RVC generator tensor (unknown keys come back for the strict check to report)."""
    for pattern, replacement in _RVC_KEYS:
        if re.match(pattern, key):
            key = re.sub(pattern, replacement, key, count=1)
            return key if key.startswith("prior_encoder.") else map_generator_key(key)
    return map_generator_key(key)


def _weight_norm_parts(weight):
    """A plain weight as weight norm's ``(g, v)`` over every axis but the first (g = |W| per output, v = W)."""
    norm = weight.flatten(1).norm(dim=1).view(-1, *([1] * (weight.dim() - 1)))
    return norm, weight


def convert_generator(state: Mapping[str, Any], expected: Mapping[str, Any]) -> dict:
    """RVC generator tensors -> our state dict (float32). ``expected``: our model's state dict, which says
    where a plain RVC weight (``dec.conv_pre``, ``dec.conv_post``) becomes a weight-norm pair."""
    out = {}
    for key, value in state.items():
        new = map_rvc_key(key)
        value = value.float()
        if new == "prior_encoder.content_proj.weight" and value.dim() == 2:
            value = value.unsqueeze(-1)  # Linear(D, hidden) -> Conv1d(D, hidden, 1)
        if new.endswith(("relative_key", "relative_value")) and value.dim() == 3 and value.shape[0] == 1:
            value = value[0]
        normed = new[:-len("weight")] + "parametrizations.weight.original0" if new.endswith(".weight") else None
        if normed is not None and new not in expected and normed in expected:
            out[normed], out[normed[:-1] + "1"] = _weight_norm_parts(value)
            continue
        out[new] = value
    return out


def _check_fits(expected: Mapping[str, Any], state: Mapping[str, Any], path: Path, what: str) -> None:
    from ai_singer.checkpoint import state_dict_diff

    diff = state_dict_diff(expected, state, max_items=4)
    if diff:
        raise RvcImportError(path, f"its tensors do not match {what}: "
                                   + "; ".join(line.strip() for line in diff.splitlines() if line.strip()))


# ------------------------------------------------------------------------------------------ import

def _posterior_from_base(base_dir: Path, fields: Mapping[str, Any], path: Path) -> dict:
    """The posterior encoder's tensors of the imported base ``base_dir`` (RVC's exported singers lack them),
    after checking that the base has the singer's architecture."""
    from ai_singer import checkpoint

    base = checkpoint.load_base(base_dir)
    differing = sorted(k for k in fields if k not in ("n_speakers", "segment_frames", "p_dropout")
                       and base.model_config.get(k) != fields[k])
    if differing:
        raise RvcImportError(path, f"is not a model of the base {base_dir}'s architecture (differs in "
                                   f"{', '.join(differing[:4])}): pass the base it was fine-tuned from")
    return {k: v for k, v in base.generator_state.items() if k.startswith("posterior_encoder.")}


def import_rvc(model_file: str | Path, name_dir: str | Path, discriminator: str | Path | None,
               base_dir: str | Path | None, sample_rate: str | None, content_path: str, overwrite: bool,
               config_path: str | Path | None = None) -> dict:
    """Import and write the base folder ``name_dir``; returns a summary (the ``imported_from`` record plus
    ``seconds``). Everything is read and checked before anything is written."""
    import torch

    from ai_singer import checkpoint
    from ai_singer.model import SingerVAE
    from ai_singer.model.discriminator import Discriminator

    started = time.perf_counter()
    model_file, name_dir = Path(model_file), Path(name_dir)
    restore_set_aside(name_dir)  # a base an import killed mid-swap set aside still exists
    if name_dir.exists() and not overwrite:
        raise RvcImportError(name_dir, "already exists; choose another --name or pass --overwrite")
    kind, raw, extra = read_payload(model_file)
    config = rvc_config(kind, raw, extra, model_file, sample_rate, Path(config_path) if config_path else None)
    fields = model_config(config, raw, model_file)
    model = SingerVAE(fields)
    expected = model.state_dict()
    state = convert_generator(raw, expected)
    del raw
    what = f"RVC {config['version']} {fields['sample_rate']} Hz (a file of another layout or a damaged model?)"
    from_base = None
    if not any(k.startswith("posterior_encoder.") for k in state):
        if base_dir is None:
            raise RvcImportError(model_file, "has no posterior encoder (RVC leaves enc_q out of exported singer "
                                             "models): pass --base pretrain/<the imported base it was fine-tuned "
                                             "from>")
        _check_fits({k: v for k, v in expected.items() if not k.startswith("posterior_encoder.")}, state,
                    model_file, what)
        state.update(_posterior_from_base(Path(base_dir), fields, model_file))
        from_base = str(base_dir)
    _check_fits(expected, state, model_file, what)

    d_state = None
    if discriminator is not None:
        discriminator = Path(discriminator)
        d_raw = _read_discriminator(discriminator)
        d_state = {map_discriminator_key(k): v.float() for k, v in d_raw.items()}
        _check_fits(Discriminator.from_config(model.config).state_dict(), d_state, discriminator,
                    f"the generator's layout (RVC {config['version']}: the scale discriminator and periods "
                    f"{fields['discriminator_periods']})")

    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    iteration = extra.get("iteration")
    record = {
        "format": f"RVC {config['version']} {'singer model' if kind == 'singer' else 'checkpoint'}",
        "generator": str(model_file), "generator_sha256": checkpoint.sha256_file(model_file),
        "sample_rate": fields["sample_rate"], "iteration": int(iteration) if isinstance(iteration, int) else None,
        "info": str(extra["info"]) if "info" in extra else None,
        "discriminator": str(discriminator) if discriminator is not None else None,
        "posterior_encoder_from": from_base,
        "noise_scale": 0.66666,  # RVC's inference samples the prior at this fixed temperature
    }
    base_config = {"model": fields, "steps": record["iteration"],
                   "content_encoder": content_encoder_record(config["version"], content_path),
                   "sample_rate": fields["sample_rate"], "hop_length": fields["hop_length"],
                   "speakers": [f"speaker_{i}" for i in range(fields["n_speakers"])], "imported_from": record}
    checkpoint.save_base(name_dir, model.state_dict(), d_state, base_config)  # all files appear together, or none
    return {**record, "kind": kind, "seconds": time.perf_counter() - started}


def _read_discriminator(path: Path) -> dict:
    import torch

    payload = load_checkpoint(path, {}, "an RVC discriminator (f0D*.pth)")
    state = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RvcImportError(path, "not an RVC discriminator: expected {\"model\": tensors} (f0D40k.pth)")
    state = {str(k)[len("module."):] if str(k).startswith("module.") else str(k): v for k, v in state.items()}
    if "emb_g.weight" in state:
        raise RvcImportError(path, "is a generator (it has emb_g.weight), not a discriminator")
    return state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``rvc`` sub-command's arguments (defaults of the folders: conf/)."""
    from ai_singer.importers.base_arguments import add_base_output_arguments

    parser.add_argument("model", type=Path, help="an RVC generator: a base (f0G40k.pth, f0G48k.pth, a training "
                                                 "G_*.pth) or an exported singer model (assets/weights/NAME.pth)")
    parser.add_argument("--discriminator", type=Path, help="the base's discriminator (f0D40k.pth), for "
                                                           "fine-tuning with a trained discriminator")
    parser.add_argument("--base", type=Path, help="for an exported singer model: the imported base it was "
                                                  "fine-tuned from (gives the posterior encoder RVC leaves out)")
    parser.add_argument("--config", type=Path, help="for a base or checkpoint of a layout other than RVC's "
                        "published ones: its training config.json (an exported singer model carries its own)")
    parser.add_argument("--sample-rate", choices=sorted(_SAMPLE_RATES), help="for a base or checkpoint whose "
                        "rate its tensors do not tell (v1 32k/48k): RVC's rate, as in its file name")
    add_base_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command (a :class:`~ai_singer.errors.UserError` goes to the dispatcher: one line, exit 2)."""
    target = args.pretrain_dir / args.name
    summary = import_rvc(args.model, target, args.discriminator, args.base, args.sample_rate, args.content_path,
                         args.overwrite, args.config)
    print(f"wrote {target} from {args.model} ({summary['format']}, {summary['sample_rate']} Hz) in "
          f"{summary['seconds']:.1f} s")
    if summary["kind"] == "singer":
        print(f"  as an adapter: ai-singer extract-adapter base={summary['posterior_encoder_from']} full={target} "
              "speaker=0 out=singers/<name>")
    else:
        print(f"  fine-tune: ai-singer train mode=finetune singer=<name> base={target} peft=lora")
    print("  RVC samples the prior with noise_scale=0.66666 (conf/infer.yaml's noise_scale)")
    return 0
