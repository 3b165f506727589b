"""Progress of the preprocess stage, in seconds of audio: a tqdm bar on a terminal, plain lines elsewhere."""
from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any, Sequence


class StageProgress:
    """Progress of the stage in seconds of audio (a 30-minute file is not one tick): a tqdm bar on a
    terminal, and where there is none (a log file, CI, ``nohup``) a plain line every ``every_s`` seconds."""

    def __init__(self, jobs: Sequence[Any], enabled: bool, every_s: float = 15.0):
        """``jobs``: the stage's source jobs (each with ``.source`` and ``.seconds``)."""
        import time

        from tqdm import tqdm

        self._clock = time.monotonic
        self.expected = {job.source: job.seconds for job in jobs}
        self.reported: dict[str, float] = defaultdict(float)
        self.total = sum(self.expected.values())
        self.files, self.files_done = len(jobs), 0
        self.enabled, self.every_s = enabled, every_s
        self.started = self.last_line = self._clock()
        terminal = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=round(self.total, 1), unit="s", unit_scale=True, desc="preprocess (audio)",
                        disable=not terminal) if enabled else None
        self.lines = enabled and not terminal

    @property
    def done(self) -> float:
        return sum(self.reported.values())

    def advance(self, source: str, seconds: float) -> None:
        """``seconds`` more of ``source`` processed (capped at its length)."""
        room = max(0.0, self.expected.get(source, 0.0) - self.reported[source])
        step = min(seconds, room)
        self.reported[source] += step
        if self.bar is not None:
            self.bar.update(step)
        self._maybe_line()

    def finish_file(self, source: str) -> None:
        self.advance(source, self.expected.get(source, 0.0))  # silences skipped by the slicer, rejections
        self.files_done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.files_done}/{self.files} files", refresh=False)
        self._maybe_line()

    def _maybe_line(self, force: bool = False) -> None:
        now = self._clock()
        if self.lines and (force or now - self.last_line >= self.every_s):
            self.last_line = now
            share = self.done / self.total if self.total else 1.0
            print(f"preprocess: {share:4.0%} ({self.done:.0f}/{self.total:.0f} s of audio, "
                  f"{self.files_done}/{self.files} files, {now - self.started:.0f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.files:
            self._maybe_line(force=True)
