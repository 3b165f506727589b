"""The ``ai-singer extract-adapter`` stage: a full fine-tuned singer model -> a LoRA adapter on its base.

    ai-singer extract-adapter base=pretrain/real-ddsp-words full=singers/alice-full out=singers/alice rank=16

Reads the base and the full model (:mod:`ai_singer.full_model`), compresses their per-layer difference by
truncated SVD (:mod:`ai_singer.lora_svd`) and writes ``out/adapter.{safetensors,yaml}`` (plus the full model's
retrieval index when it has one). ``adapter.yaml`` is an ordinary ``method: lora`` description (``convert``
loads it like a trained adapter) with an ``extraction`` section: where it came from (path and sha256), rank or
energy, and the relative error of the kept weight difference. Every input is checked before anything is
written: a bad input is one line on stderr and exit code 2, with the output folder untouched.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ai_singer import checkpoint as ckpt
from ai_singer.bundle import locate_path
from ai_singer.full_model import FullModel, base_model, load_full
from ai_singer.lora_svd import ExtractError, Extraction, ExtractSettings, extract, plain_parameters

#: The settings with no default (``???`` in ``conf/extract.yaml``) and what each names.
REQUIRED = {"base": "the base folder the full model was fine-tuned from",
            "full": "a peft=full adapter folder, a base-layout folder or a .safetensors generator",
            "out": "the adapter folder to write, e.g. singers/<name>"}


def settings_from_config(cfg: Any) -> ExtractSettings:
    """The compression settings of a composed ``conf/extract.yaml``."""
    return ExtractSettings(rank=cfg.rank, energy=cfg.energy, drop=list(cfg.drop), dtype=str(cfg.dtype))


def _check_output(out: Path, full: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExtractError(f"out={out}", "is a file, not a folder")
    if full.exists() and out.resolve() == full.resolve():
        raise ExtractError(f"out={out}", "is the full model's own folder", "choose another out= folder")
    if (out / ckpt.ADAPTER_CONFIG_FILE).exists() and not overwrite:
        raise ExtractError(f"out={out}", "already holds an adapter",
                           "overwrite=true replaces it, or choose another out=")


def extract_adapter(base_dir: str | os.PathLike, full_path: str | os.PathLike, out_dir: str | os.PathLike,
                    settings: ExtractSettings, speaker: Any = None, overwrite: bool = False
                    ) -> tuple[Path, Extraction]:
    """Write the adapter of ``full_path`` on the base ``base_dir`` into ``out_dir``; returns the folder and the
    extraction (its per-parameter report). Raises a UserError (nothing written) for a bad input."""
    from ai_singer.config import conf_group

    out, full_path = Path(out_dir), Path(full_path)
    _check_output(out, full_path, overwrite)
    base = ckpt.load_base(locate_path(str(base_dir)))  # the user's folder, else the bundled one
    model = base_model(base)
    full = load_full(full_path, base, plain_parameters(model), speaker)
    extraction = extract(model, full.parameters, full.singer_vector, settings, conf_group("peft", "lora"))
    return _write(out, base, full, settings, extraction), extraction


def _write(out: Path, base: ckpt.BaseArtifact, full: FullModel, settings: ExtractSettings,
           extraction: Extraction) -> Path:
    config = {"singer": out.name, "method": extraction.peft.method, "peft": extraction.peft.to_dict(),
              "steps": full.steps, "retrieval_index": None, "base_sha256": base.sha256,
              "base_name": base.name, "stats": full.stats,
              "extraction": {"method": "truncated_svd", "from": str(full.path), "from_sha256": full.sha256,
                             "rank": settings.rank, "energy": settings.energy, "drop": settings.drop,
                             "dtype": settings.dtype, **extraction.summary()}}
    return ckpt.save_adapter(out, extraction.tensors, config, retrieval_index=full.retrieval)


def describe(out: Path, extraction: Extraction) -> str:
    """The command's printout: what was written and how much of the difference it keeps."""
    summary = extraction.summary()
    megabytes = (out / ckpt.ADAPTER_TENSORS_FILE).stat().st_size / 1e6
    kinds = ", ".join(f"{kind} {entry['parameters']}" for kind, entry in sorted(summary["kinds"].items()))
    ranks = ("" if not summary["lora_layers"] else f" (ranks {summary['rank_min']}-{summary['rank_max']})"
             if summary["rank_min"] != summary["rank_max"] else f" (rank {summary['rank_max']})")
    text = (f"extract-adapter: wrote {out} ({megabytes:.2f} MB): {summary['lora_layers']} LoRA layers{ranks}; "
            f"parameters: {kinds}; relative error of the weight difference {summary['relative_error']:.4f}")
    if summary["dropped"]:
        text += f" (dropped: {summary['dropped_share']:.4f} of it, {len(summary['dropped'])} parameters)"
    return text


def run_cli(cfg: Any) -> int:
    """The command's body; a bad input raises a UserError (reported by the Hydra wrapper, exit code 2)."""
    from omegaconf import OmegaConf

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for key, what in REQUIRED.items():
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise ExtractError(key, f"set {key}=PATH ({what})")
    out, extraction = extract_adapter(cfg.base, cfg.full, cfg.out, settings_from_config(cfg), cfg.speaker,
                                      bool(cfg.overwrite))
    print(describe(out, extraction))
    return 0


def main() -> None:
    """``python -m ai_singer.extract base=... full=... out=... [rank=16 | energy=0.9]`` (Hydra)."""
    from ai_singer.conf_dir import run_hydra_app

    run_hydra_app("extract", run_cli)


if __name__ == "__main__":
    main()
