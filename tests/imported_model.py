"""Helpers for the importer tests (so-vits-svc, RVC): load an imported base as a model, and serve the random
draws an original implementation made to ours."""
from __future__ import annotations

from pathlib import Path

import torch

from ai_singer import checkpoint
from ai_singer.model import SingerVAE


def load_model(base_dir: Path) -> SingerVAE:
    """The generator of the base folder ``base_dir``, loaded strictly."""
    base = checkpoint.load_base(base_dir)
    model = SingerVAE(base.model_config)
    checkpoint.load_state_strict(model, base.generator_state, base_dir / checkpoint.BASE_GENERATOR_FILE)
    return model


class Replay:
    """Serves recorded random draws to our model: ``torch.randn``/``randn_like``/``rand`` return the tensor
    queued for the requested shape (and fail on any draw that was not planned)."""

    def __init__(self, monkeypatch, draws: dict[tuple, list[torch.Tensor]]):
        self.draws = {shape: list(values) for shape, values in draws.items()}
        monkeypatch.setattr(torch, "randn", self._serve)
        monkeypatch.setattr(torch, "rand", self._serve)
        monkeypatch.setattr(torch, "randn_like", lambda t, **kw: self._serve(t.shape, dtype=t.dtype))

    def _serve(self, *shape, dtype=None, **_):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        queue = self.draws.get(tuple(shape))
        assert queue, f"unplanned random draw of shape {tuple(shape)}"
        value = queue.pop(0)
        return value.to(dtype) if dtype is not None else value.clone()

    def all_used(self) -> bool:
        return not any(self.draws.values())
