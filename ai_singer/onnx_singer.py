"""A singer exported to ONNX (``ai-singer export``) and its conversion with ONNX Runtime (``engine=onnx``).

An export is a folder, by default ``<singer folder>/onnx/``:

- ``prior.onnx``: content [1, D, T], f0 / voiced / volume [1, T], prior_noise [1, I, T], source_noise [1, K, T*hop],
  noise_scale [] -> frames [1, C, T], source [1, 1, T*hop] (:class:`ai_singer.model.inference_graphs.PriorGraph`);
- ``decoder.onnx``: frames [1, C, W], source [1, 1, W*hop] -> audio [1, 1, W*hop] (the decoder's upsampling stages);
- ``export.yaml``: what it is (format version, singer, the base's and the adapter's sha256, the framing, the
  decoder's receptive field, each file's sha256, the largest difference to the torch model measured at export).
  Each ``.onnx`` file also carries this description in its ``metadata_props`` (key ``ai_singer``).

The singer's adapter is merged into the weights and its vector is a constant of the graphs, so an export serves one
singer on one base: :func:`stale_reason` says when the base or the adapter has changed since. The noise is drawn here
from the piece's torch generator in the order :meth:`SingerVAE.infer` draws it, so ``engine=onnx`` converts a piece
as ``engine=torch`` does, up to float rounding. The files need onnxruntime only (a dependency of the default F0
tracker); making them needs the ``onnx`` extra.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ai_singer.errors import UserError
from ai_singer.model.decoder import decode_windows
from ai_singer.model.inference_graphs import DECODER_INPUTS, PRIOR_INPUTS

log = logging.getLogger(__name__)

EXPORT_DIR = "onnx"
PRIOR_FILE = "prior.onnx"
DECODER_FILE = "decoder.onnx"
EXPORT_CONFIG_FILE = "export.yaml"
FORMAT_VERSION = 1
KIND = "onnx_singer"
#: the key of the description in each ONNX file's metadata_props
METADATA_KEY = "ai_singer"


class OnnxExportError(UserError):
    """An export that cannot be made or used: ``where`` is the folder, file or setting."""


def read_export(folder: str | os.PathLike) -> dict:
    """The ``export.yaml`` of an export folder; OnnxExportError when there is none or it is not one."""
    path = Path(folder) / EXPORT_CONFIG_FILE
    if not path.is_file():
        raise OnnxExportError(folder, f"no ONNX export ({EXPORT_CONFIG_FILE} missing)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise OnnxExportError(path, f"unreadable: {error}") from error
    if config.get("kind") != KIND or config.get("format_version") != FORMAT_VERSION:
        raise OnnxExportError(path, f"not an ONNX singer export of format {FORMAT_VERSION} (kind {config.get('kind')!r}, "
                                    f"format_version {config.get('format_version')!r})")
    return config


def stale_reason(config: dict, base_sha256: str, adapter_sha256: str | None) -> str | None:
    """Why an export (its ``export.yaml``) no longer matches the base and adapter it would stand for, or None."""
    if config.get("base_sha256") != base_sha256:
        return "it was made from another base (or the base has changed since)"
    if adapter_sha256 is None or config.get("adapter_sha256") != adapter_sha256:
        return "the singer's adapter has changed since it was made"
    return None


def session_options(threads: int):
    """ONNX Runtime options: ``threads`` intra-op threads (as torch uses), one inter-op thread, all graph
    optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


class OnnxSinger:
    """A loaded export: :meth:`convert` runs one piece. The files' sha256 are checked against ``export.yaml``.

    Args:
        folder: the export folder.
        threads: intra-op threads of the sessions (default: torch's thread count).
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        from ai_singer.checkpoint import sha256_file

        self.folder = Path(folder)
        self.config = read_export(self.folder)
        for name in (PRIOR_FILE, DECODER_FILE):
            path = self.folder / name
            if not path.is_file():
                raise OnnxExportError(path, "missing", "export the singer again (ai-singer export singer=NAME)")
            if sha256_file(path) != (self.config.get("files") or {}).get(name):
                raise OnnxExportError(path, f"sha256 differs from the one {EXPORT_CONFIG_FILE} records (changed or "
                                            "partly written)", "export the singer again (ai-singer export singer=NAME)")
        model = self.config["model"]
        self.hop = int(model["hop_length"])
        self.latent_channels = int(model["inter_channels"])
        self.source_harmonics = int(model["source_harmonics"])
        self.receptive_field_frames = int(model["receptive_field_frames"])
        options = session_options(torch.get_num_threads() if threads is None else threads)
        providers = ["CPUExecutionProvider"]
        self.prior = ort.InferenceSession(str(self.folder / PRIOR_FILE), options, providers=providers)
        self.decoder = ort.InferenceSession(str(self.folder / DECODER_FILE), options, providers=providers)

    def noise(self, n_frames: int, generator: torch.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """The prior's and the source's standard normal noise for ``n_frames``, [1, I, T] and [1, K, T*hop], drawn
        from ``generator`` in :meth:`SingerVAE.infer`'s order (prior first, then the NSF source)."""
        prior = torch.randn((self.latent_channels, n_frames), generator=generator)
        source = torch.randn((self.source_harmonics, n_frames * self.hop), generator=generator)
        return prior.numpy()[None], source.numpy()[None]

    def convert(self, content: np.ndarray, f0: np.ndarray, voiced: np.ndarray, volume: np.ndarray,
                noise_scale: float, generator: torch.Generator | None, window_frames: int) -> np.ndarray:
        """One piece: ``content`` [D, T], ``f0`` [T] Hz, ``voiced`` [T] 0/1, ``volume`` [T] -> audio float32
        [T*hop]. ``window_frames`` > 0: the decoder runs over windows of that many frames (with its receptive
        field as context, as the torch path does); 0: at once."""
        n_frames = content.shape[1]
        prior_noise, source_noise = self.noise(n_frames, generator)
        values = (content, f0, voiced, volume)
        feed = {name: np.ascontiguousarray(value, dtype=np.float32)[None]
                for name, value in zip(PRIOR_INPUTS[:4], values)}
        feed.update(prior_noise=prior_noise, source_noise=source_noise,
                    noise_scale=np.asarray(noise_scale, dtype=np.float32))
        frames, source = self.prior.run(None, feed)
        hop, pieces = self.hop, []
        for low, high, keep, n in decode_windows(n_frames, window_frames, self.receptive_field_frames):
            window = dict(zip(DECODER_INPUTS, (np.ascontiguousarray(frames[..., low:high]),
                                               np.ascontiguousarray(source[..., low * hop: high * hop]))))
            pieces.append(self.decoder.run(None, window)[0][0, 0, keep * hop: (keep + n) * hop])
        return np.concatenate(pieces)
