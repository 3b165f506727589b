"""The ``ai-singer export`` stage: a singer (base + adapter, merged) as ONNX graphs for ONNX Runtime.

    ai-singer export singer=NAME [base=NAME_OR_DIR] [out=DIR]      (= python -m ai_singer.onnx_export ...)

Writes ``<singer folder>/onnx/`` (or ``out``): ``prior.onnx``, ``decoder.onnx`` and ``export.yaml``
(:mod:`ai_singer.onnx_singer` describes them), all at once (a temporary folder swapped into place: a failure or a
kill at any moment leaves the whole old export or the whole new one). Before it is
written, the export is run beside the torch model on ``check_frames`` random frames with the same noise, and refused
when the largest difference exceeds ``tolerance``; ``export.yaml`` records it. Conversion then uses it with
``engine=onnx`` (or ``auto``). Needs the ``onnx`` extra (``pip install 'ai_singer[onnx]'``: onnx, onnxscript).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from ai_singer.onnx_singer import (DECODER_FILE, EXPORT_CONFIG_FILE, EXPORT_DIR, FORMAT_VERSION, KIND, METADATA_KEY,
                                   PRIOR_FILE, OnnxExportError, OnnxSinger)

log = logging.getLogger(__name__)


def export_singer(singer: str, singers_dir: str | os.PathLike, pretrain_dir: str | os.PathLike,
                  base: str | None = None, out: str | os.PathLike | None = None, check_frames: int = 64,
                  tolerance: float = 1e-3) -> tuple[Path, dict]:
    """Export ``singer`` (a folder under ``singers_dir``) on its base (``base``, else the one its adapter names)
    into ``out`` (default ``<singer folder>/onnx``); returns the folder and its ``export.yaml``. UserErrors for
    what the user can fix (unknown singer, a blend, a DDSP base, the onnx extra missing)."""
    from ai_singer import checkpoint
    from ai_singer.atomic import atomic_folder, atomic_write_text, remove_stale_temporaries
    from ai_singer.convert import InferError, load_base_model, resolve_base_dir, singer_dir, with_adapter
    from ai_singer.model.inference_graphs import PriorGraph, DecoderGraph, check_exportable
    from ai_singer.singer_spec import parse_singer_spec

    spec = parse_singer_spec(singer, "singer")
    if spec.is_blend:
        raise OnnxExportError(f"singer={singer}", "a blend has no folder to export",
                              f"save it as a singer first (ai-singer blend {singer} out=NAME), then export NAME")
    singer = spec.names[0]
    folder = singer_dir(singer, singers_dir)
    try:
        adapter = checkpoint.load_adapter(folder)
    except checkpoint.ArtifactError as error:
        raise InferError(f"singer {singer!r}", f"cannot load the adapter: {error}") from error
    base_dir = resolve_base_dir(base, adapter.config.get("base_name"), pretrain_dir)
    base_artifact, model = load_base_model(base_dir)
    try:
        checkpoint.check_adapter_base(adapter, base_artifact)
    except checkpoint.AdapterBaseMismatch as error:
        raise InferError(f"singer {singer!r}", f"adapter for another base: {error}") from error
    try:
        check_exportable(model)
    except ValueError as error:
        raise OnnxExportError(base_dir, str(error), "convert this base with engine=torch") from None
    model = with_adapter(model, adapter).eval()
    g = adapter.tensors["singer_embedding"].float().reshape(1, -1)
    prior, decoder = PriorGraph(model, g).eval(), DecoderGraph(model).eval()
    decoder_module = model.decoder
    description = {
        "format_version": FORMAT_VERSION, "kind": KIND, "singer": singer, "base_name": base_artifact.name,
        "base_sha256": base_artifact.sha256, "adapter_sha256": adapter.tensors_sha256(),
        "model": {"sample_rate": int(model.config.sample_rate), "hop_length": int(model.config.hop_length),
                  "content_dim": int(model.config.content_dim), "inter_channels": int(model.config.inter_channels),
                  "source_harmonics": int(decoder_module.source.n_harmonics),
                  "frame_channels": int(model.config.upsample_initial_channel),
                  "receptive_field_frames": int(decoder_module.receptive_field_frames())},
        "torch": str(torch.__version__),
    }
    out = Path(out) if out else folder / EXPORT_DIR
    inputs = example_inputs(model, check_frames)
    remove_stale_temporaries(out.parent)  # what killed exports left beside it (a set-aside old export comes back)
    with atomic_folder(out) as tmp:
        _export(prior, decoder, inputs, tmp, description)
        files = {name: checkpoint.sha256_file(tmp / name) for name in (PRIOR_FILE, DECODER_FILE)}
        config = {**description, "files": files, "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        atomic_write_text(tmp / EXPORT_CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
        difference = largest_difference(model, g, OnnxSinger(tmp), inputs,
                                        window_frames=max(2, check_frames // 3))
        if not difference <= tolerance:
            raise OnnxExportError(out, f"the ONNX graphs differ from the torch model by up to {difference:.3g} on "
                                       f"random input (tolerance {tolerance:g}); nothing was written",
                                  "convert with engine=torch, and report this with the base's config")
        config["check"] = {"frames": check_frames, "max_abs_difference": float(difference)}
        atomic_write_text(tmp / EXPORT_CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    return out, config


def example_inputs(model: torch.nn.Module, n_frames: int) -> tuple[np.ndarray, ...]:
    """Random but plausible conversion inputs for ``n_frames`` (fixed seed): content [D, T], F0 [T] sweeping 110-440
    Hz, voiced [T] with an unvoiced stretch, volume [T]."""
    generator = torch.Generator().manual_seed(0)
    content = torch.randn(model.config.content_dim, n_frames, generator=generator).numpy()
    f0 = np.geomspace(110.0, 440.0, n_frames).astype(np.float32)
    voiced = np.ones(n_frames, dtype=np.float32)
    voiced[n_frames // 3: n_frames // 2] = 0.0
    volume = (0.05 + 0.1 * torch.rand(n_frames, generator=generator)).numpy()
    return content, f0, voiced, volume


def _export(prior: torch.nn.Module, decoder: torch.nn.Module, inputs: tuple[np.ndarray, ...], folder: Path,
            description: dict) -> None:
    """``prior.onnx`` and ``decoder.onnx`` of the graphs into ``folder``, the number of frames dynamic."""
    try:
        import onnx  # noqa: F401 - torch.onnx's exporter needs both
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise OnnxExportError("ai-singer export", f"needs the onnx extra ({error.name} is not installed)",
                              "pip install 'ai_singer[onnx]' (onnx, onnxscript)") from None
    from ai_singer.model.inference_graphs import DECODER_INPUTS, DECODER_OUTPUTS, PRIOR_INPUTS, PRIOR_OUTPUTS

    hop = description["model"]["hop_length"]
    content, f0, voiced, volume = (torch.from_numpy(x)[None] for x in inputs)
    n_frames = content.shape[-1]
    model = description["model"]
    args = (content, f0, voiced, volume, torch.randn(1, model["inter_channels"], n_frames),
            torch.randn(1, model["source_harmonics"], n_frames * hop), torch.tensor(0.5))
    frames = torch.export.Dim("frames", min=2, max=1 << 20)
    prior_shapes = dict(zip(PRIOR_INPUTS, ({2: frames}, {1: frames}, {1: frames}, {1: frames}, {2: frames},
                                           {2: frames * hop}, {})))
    with torch.no_grad():
        frame_input, source = prior(*args)
    window = torch.export.Dim("window", min=2, max=1 << 20)
    decoder_shapes = dict(zip(DECODER_INPUTS, ({2: window}, {2: window * hop})))
    metadata = json.dumps(description)
    with quiet_exporter():
        for graph, graph_args, shapes, names, file in (
                (prior, args, prior_shapes, (PRIOR_INPUTS, PRIOR_OUTPUTS), PRIOR_FILE),
                (decoder, (frame_input, source), decoder_shapes, (DECODER_INPUTS, DECODER_OUTPUTS), DECODER_FILE)):
            program = torch.onnx.export(graph, graph_args, dynamo=True, dynamic_shapes=shapes, input_names=names[0],
                                        output_names=names[1], verbose=False, optimize=True)
            program.model.metadata_props[METADATA_KEY] = metadata
            program.save(folder / file, external_data=False)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """torch.onnx's exporter and its optimiser without their notes: hundreds of INFO log lines, warnings about
    torchvision ops and deprecations of torch internals (errors still raise)."""
    root, exporter = logging.getLogger(), logging.getLogger("torch.onnx")
    levels = root.level, exporter.level
    root.setLevel(max(logging.WARNING, root.level))
    exporter.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(levels[0])
        exporter.setLevel(levels[1])


@torch.inference_mode()
def largest_difference(model: torch.nn.Module, g: torch.Tensor, onnx: OnnxSinger, inputs: tuple[np.ndarray, ...],
                       window_frames: int, noise_scale: float = 0.5) -> float:
    """The largest absolute difference between the torch model's and the export's audio for ``inputs`` (content
    [D, T], f0, voiced, volume [T]) with the same noise (one generator, seeded alike) and decoder windows."""
    content, f0, voiced, volume = inputs
    torch_audio = model.infer(*(torch.from_numpy(x)[None] for x in inputs), g, noise_scale=noise_scale,
                              generator=[torch.Generator().manual_seed(7)], decode_window_frames=window_frames)
    onnx_audio = onnx.convert(content, f0, voiced, volume, noise_scale, torch.Generator().manual_seed(7),
                              window_frames)
    return float(np.abs(torch_audio[0, 0].numpy() - onnx_audio).max())


def run_cli(cfg: Any) -> int:
    """The command's body; a bad input raises a UserError (reported by the Hydra wrapper, exit code 2)."""
    from omegaconf import OmegaConf

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if OmegaConf.is_missing(cfg, "singer") or not cfg.get("singer"):
        raise OnnxExportError("singer", "set singer=NAME (a folder under paths.singers)")
    out, config = export_singer(str(cfg.singer), cfg.paths.singers, cfg.paths.pretrain, cfg.get("base") or None,
                                cfg.get("out") or None, int(cfg.check_frames), float(cfg.tolerance))
    megabytes = sum((out / name).stat().st_size for name in config["files"]) / 1e6
    print(f"export: wrote {out} ({megabytes:.1f} MB; ONNX vs torch on {config['check']['frames']} random frames: "
          f"max |difference| {config['check']['max_abs_difference']:.2g}); convert with engine=onnx or auto")
    return 0


def main() -> None:
    """``python -m ai_singer.onnx_export singer=NAME [base=...] [out=DIR]`` (Hydra)."""
    from ai_singer.conf_dir import run_hydra_app

    run_hydra_app("export", run_cli)


if __name__ == "__main__":
    main()
