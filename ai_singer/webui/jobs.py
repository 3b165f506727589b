"""Long work of the web interface (conversion, preprocessing, fine-tuning) in background threads.

A :class:`Job` runs one stage function in its own thread while the page polls its state: ``queued`` (waiting
for a free slot: at most ``parallel`` jobs run at once on this machine), ``running``, then ``done``, ``stopped``
(a stop was asked and honoured, e.g. a fine-tune that saved its checkpoint) or ``failed``. A user's mistake
(:class:`ai_singer.errors.UserError`) and a full disk fail the job with the same one line the command line
prints (``convert: error: ...``); anything else is a bug, logged with its traceback and shown as
``<stage>: failed: <type>: <message>``. Log records emitted by the job's thread are kept (last ``max_log``) so
the page can show the stage's warnings.

No gradio and no torch here.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ai_singer.errors import OutOfSpace, is_out_of_space, is_user_error, one_line

log = logging.getLogger(__name__)

#: Job states; the last three are final.
QUEUED, RUNNING, DONE, STOPPED, FAILED = "queued", "running", "done", "stopped", "failed"
FINAL = (DONE, STOPPED, FAILED)


class StopRequested(Exception):
    """Raised inside a job's function (by :meth:`Job.check_stop`) when a stop was asked before it started."""


@dataclass
class Job:
    """One piece of background work and what the page shows of it."""

    id: str
    stage: str  # the command it stands for: convert, preprocess, train
    owner: str  # the session token it belongs to
    status: str = QUEUED
    error: str = ""  # the one-line message when failed
    progress: dict[str, Any] = field(default_factory=dict)  # stage-specific (step, losses, per-song status)
    result: Any = None
    log_lines: list[str] = field(default_factory=list)
    started: float | None = None
    finished: float | None = None
    max_log: int = 200
    stop_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def stop(self) -> None:
        """Ask the job to stop at its next safe point (a fine-tune saves its checkpoint first)."""
        self.stop_event.set()

    @property
    def stop_asked(self) -> bool:
        return self.stop_event.is_set()

    def check_stop(self) -> None:
        if self.stop_event.is_set():
            raise StopRequested

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)


class _JobLogHandler(logging.Handler):
    """Keeps the records of the threads of running jobs in their job's ``log_lines``."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.by_thread: dict[int, Job] = {}

    def emit(self, record: logging.LogRecord) -> None:
        job = self.by_thread.get(record.thread)
        if job is None:
            return
        job.log_lines.append(f"{record.levelname.lower()}: {record.getMessage()}")
        del job.log_lines[:-job.max_log]


class JobRunner:
    """Starts jobs in threads, at most ``parallel`` running at once (the others wait, ``queued``)."""

    def __init__(self, parallel: int = 1):
        self._slots = threading.Semaphore(max(1, parallel))
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._handler = _JobLogHandler()
        logging.getLogger("ai_singer").addHandler(self._handler)
        if logging.getLogger("ai_singer").getEffectiveLevel() > logging.INFO:
            logging.getLogger("ai_singer").setLevel(logging.INFO)

    def start(self, stage: str, owner: str, work: Callable[[Job], Any]) -> Job:
        """Run ``work(job)`` in a new thread; its return value becomes ``job.result``."""
        with self._lock:
            job = Job(id=f"{stage}-{next(self._ids)}", stage=stage, owner=owner)
            self._jobs[job.id] = job
        thread = threading.Thread(target=self._run, args=(job, work), name=job.id, daemon=True)
        thread.start()
        return job

    def get(self, job_id: str | None, owner: str | None = None) -> Job | None:
        """The job of that id, only if it belongs to ``owner`` (when given)."""
        job = self._jobs.get(job_id or "")
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    def busy(self, owner: str) -> bool:
        """Whether ``owner`` has a job that is not finished."""
        return any(job.owner == owner and not job.final for job in list(self._jobs.values()))

    def forget(self, owner: str) -> None:
        with self._lock:
            for job_id in [i for i, j in self._jobs.items() if j.owner == owner and j.final]:
                del self._jobs[job_id]

    def _run(self, job: Job, work: Callable[[Job], Any]) -> None:
        with self._slots:
            job.started = time.monotonic()
            job.status = RUNNING
            self._handler.by_thread[threading.get_ident()] = job
            try:
                if job.stop_asked:
                    raise StopRequested
                job.result = work(job)
                job.status = STOPPED if job.progress.get("interrupted") else DONE
            except StopRequested:
                job.status = STOPPED
            except Exception as error:  # noqa: BLE001 - every failure ends as the job's message
                job.error = failure_message(job.stage, error)
                job.status = FAILED
                if not is_user_error(error) and not is_out_of_space(error):
                    log.error("%s failed", job.id, exc_info=error)
            finally:
                self._handler.by_thread.pop(threading.get_ident(), None)
                job.finished = time.monotonic()
                job.done_event.set()


def failure_message(stage: str, error: BaseException) -> str:
    """The one line shown for a failed job: the command line's ``<stage>: error: ...`` for a user's mistake
    or a full disk, ``<stage>: failed: <type>: ...`` for anything else."""
    if is_user_error(error):
        return one_line(stage, error)
    if is_out_of_space(error):
        return one_line(stage, error if isinstance(error, OutOfSpace) else OutOfSpace(str(error)))
    return f"{stage}: failed: {type(error).__name__}: {' '.join(str(error).split())}"
