"""``ai-singer ui``: the web interface (Gradio) — Convert, Train and Singers pages over the command line's stages.

The page is a thin layer: uploads are taken in by :mod:`ai_singer.webui.workspace` (checked, renamed, per
session), long work runs as :mod:`ai_singer.webui.jobs` in background threads that the page polls, and every
button calls a function of :mod:`ai_singer.webui.stages`, which runs the same stage code as ``ai-singer
convert|preprocess|train|concat``. It listens on 127.0.0.1 unless told otherwise and never opens a share link.
Settings: ``conf/ui.yaml`` (host, port, upload limits, ...), overridden by the command's options.
"""
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_singer.errors import UserError, one_line
from ai_singer.webui import stages
from ai_singer.webui.jobs import DONE, FAILED, FINAL, STOPPED, Job, JobRunner
from ai_singer.webui.workspace import AUDIO_SUFFIXES, UPLOAD_SUFFIXES, Limits, Workspace, display_name, \
    take_audio, take_recordings, take_song_folder, take_songs

log = logging.getLogger(__name__)

#: Key names offered for pitch correction (the stage accepts any spelling ``key_to_pitch_class`` reads).
KEYS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
#: How often (at most) the working folder is swept for expired sessions.
SWEEP_EVERY_S = 60.0
UI_EXTRA_HINT = "install the web interface's extra: pip install -e '.[ui]' (or pip install 'ai_singer[ui]')"


@dataclass
class UiSettings:
    """``conf/ui.yaml`` plus the catalog folders (``conf/paths``'s unless given)."""

    host: str
    port: int
    workdir: str | None
    max_upload_mb: float
    max_archive_mb: float
    max_archive_files: int
    parallel_jobs: int
    session_max_age_h: float
    train_num_workers: int
    refresh_s: float
    pretrain_dir: str
    singers_dir: str
    raw_dir: str

    @classmethod
    def from_conf(cls, **given: Any) -> "UiSettings":
        from ai_singer.config import conf_file, conf_group

        paths = conf_group("paths")
        values = {**conf_file("ui"), "pretrain_dir": paths["pretrain"], "singers_dir": paths["singers"],
                  "raw_dir": paths["raw"]}
        values.update({key: value for key, value in given.items() if value is not None})
        return cls(**values)

    @property
    def limits(self) -> Limits:
        return Limits(max_file_bytes=int(self.max_upload_mb * 1e6), max_archive_bytes=int(self.max_archive_mb * 1e6),
                      max_archive_files=int(self.max_archive_files))


def _require_gradio():
    try:
        import gradio
    except ImportError:
        raise UserError("ai-singer ui", "gradio is not installed", UI_EXTRA_HINT) from None
    return gradio


def _uploads(files: Any) -> list[tuple[str, str]]:
    """Gradio's uploaded files as ``(path in gradio's cache, the name the user gave)``."""
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    return [(str(f), Path(str(f)).name) for f in files]


class Server:
    """The state shared by every page: settings, working folder, jobs, catalog."""

    def __init__(self, settings: UiSettings):
        self.settings = settings
        self._own_workdir = settings.workdir is None
        root = Path(tempfile.mkdtemp(prefix="ai-singer-ui-")) if settings.workdir is None else Path(settings.workdir)
        self.workspace = Workspace(root, settings.limits, max_age_s=settings.session_max_age_h * 3600.0)
        self.workspace.sweep()  # sessions of an earlier server are gone
        self.jobs = JobRunner(settings.parallel_jobs)
        self.catalog = stages.Catalog(Path(settings.pretrain_dir), Path(settings.singers_dir))
        self._swept = time.monotonic()

    def session(self, request: Any) -> tuple[str, Path]:
        """The session's token and folder for a Gradio request."""
        session_id = getattr(request, "session_hash", None) or "anonymous"
        folder = self.workspace.folder(session_id)
        if time.monotonic() - self._swept > SWEEP_EVERY_S:
            self._swept = time.monotonic()
            self.workspace.sweep(busy=self.jobs.busy)
        return folder.name, folder

    def close_session(self, request: Any) -> None:
        session_id = getattr(request, "session_hash", None)
        token = self.workspace.token(session_id) if session_id else None
        if token and self.workspace.close(session_id, busy=self.jobs.busy):
            self.jobs.forget(token)

    def shutdown(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workspace.root, ignore_errors=True)

    # ----------------------------------------------------------------------------------------- catalog
    def singer_choices(self) -> list[tuple[str, str]]:
        """Dropdown entries ``(label, name)``: each usable adapter with the base it fits."""
        choices = []
        for adapter in self.catalog.adapters():
            if adapter.error and not adapter.method:
                continue
            fits = f"base {adapter.base.name}" if adapter.base is not None else "its base is not installed"
            shipped = ", bundled" if adapter.bundled else ""
            choices.append((f"{adapter.name} ({fits}{shipped})", adapter.name))
        return choices

    def raw_choices(self) -> list[str]:
        """The singer folders of the server's recordings folder (``paths.raw``): names the page may pick."""
        raw = Path(self.settings.raw_dir)
        return sorted(p.name for p in raw.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if raw.is_dir() else []

    def base_choices(self) -> list[str]:
        return [base.name for base in self.catalog.bases() if not base.error]

    def base_rows(self) -> list[list[Any]]:
        return [[b.name + (" (bundled)" if b.bundled else ""), b.sha256[:12], b.speakers, b.steps, b.weights_dtype or "float32", b.content_encoder,
                 b.error] for b in self.catalog.bases()]

    def adapter_rows(self) -> list[list[Any]]:
        rows = []
        for a in self.catalog.adapters():
            fits = a.base.name if a.base is not None else f"not installed ({a.base_name or '?'})"
            rows.append([a.name + (" (bundled)" if a.bundled else ""), a.method, a.steps, round(a.megabytes, 2),
                         None if a.seconds is None else round(a.seconds), None if a.f0_median_hz is None else
                         round(a.f0_median_hz), a.retrieval_centroids, fits, a.error])
        return rows


# ------------------------------------------------------------------------------------------------ pages

def _message(text: str, kind: str = "info") -> str:
    return f'<div class="ais-{kind}">{_escape(text)}</div>'


def _escape(text: str) -> str:
    import html

    return html.escape(str(text)).replace("\n", "<br>")


def _job_line(job: Job, detail: str = "", status: str | None = None) -> str:
    """The job's one status line; ``status``: the state the caller read (a poll reads it once, so the line
    and what the poll did agree while the job moves on)."""
    status = job.status if status is None else status
    if status == FAILED:
        return _message(job.error, "error")
    elapsed = f"{job.elapsed():.0f} s"
    text = {DONE: f"{job.stage}: done in {elapsed}", STOPPED: f"{job.stage}: stopped after {elapsed}"}.get(
        status, f"{job.stage}: {status} ({elapsed})")
    return _message(text + (f" — {detail}" if detail else ""), "done" if status in FINAL else "info")


def report_summary(report: dict[str, Any]) -> str:
    """What a song's report.json says that a singer looks for: the transposition (and why, when automatic),
    the vocal's loudness against the source, the warnings."""
    semitones = report.get("transpose_semitones")
    shown = (", ".join(f"{singer} {value:+g}" for singer, value in semitones.items()) if isinstance(semitones, dict)
             else f"{semitones}")
    lines = [f"{report.get('song')}: transposed (semitones) {shown}"]
    for singer, decision in (report.get("transpose_auto") or {}).items():
        lines.append(f"transpose=auto for {singer}: {decision.get('semitones'):+g} ({decision.get('reason')})")
    mix = report.get("mix") or {}
    if mix.get("vocal_level_vs_source_db") is not None:
        lines.append(f"vocal loudness matched to the source: {mix.get('vocal_loudness_match_db', 0.0):+.1f} dB "
                     f"(ends {mix['vocal_level_vs_source_db']:+.1f} dB from it)")
    lines += [f"warning: {warning}" for warning in report.get("warnings") or []]
    return _message("\n".join(lines), "info")


def build_app(server: Server):
    """The Gradio Blocks of the three pages."""
    gr = _require_gradio()
    from ai_singer.config import conf_file, conf_group
    from ai_singer.features.pitch import SCALES
    from ai_singer.train_settings import DISCRIMINATOR_MODES

    infer = conf_file("infer")
    trainer = conf_group("trainer")
    refresh = float(server.settings.refresh_s)
    audio_types = list(AUDIO_SUFFIXES)
    upload_types = list(UPLOAD_SUFFIXES)

    with gr.Blocks(title="ai_singer", analytics_enabled=False,
                   delete_cache=(3600, int(server.settings.session_max_age_h * 3600))) as app:
        gr.Markdown("## ai_singer — singing-voice conversion\nOne frozen base, a small adapter per singer. "
                    "Everything runs on this machine.")
        with gr.Tabs():
            # ============================================================================== Convert
            with gr.Tab("Convert", id="convert"):
                convert_job = gr.State(None)
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("**Song**: a vocal stem and, optionally, its accompaniment stems; or several "
                                    "songs at once (vocal files, or zips holding song folders with `vocals.*` and "
                                    "stems).")
                        vocal = gr.File(label="Vocal stem", file_types=audio_types, elem_id="convert-vocal")
                        stems = gr.File(label="Accompaniment stems (optional)", file_count="multiple",
                                        file_types=audio_types, elem_id="convert-stems")
                        batch = gr.File(label="More songs (batch)", file_count="multiple", file_types=upload_types,
                                        elem_id="convert-batch")
                        singers = server.singer_choices()
                        singer = gr.Dropdown(singers, value=singers[0][1] if singers else None,
                                             label="Singer (the base it fits)", elem_id="convert-singer")
                        with gr.Row():
                            auto = gr.Checkbox(label="Transpose automatically (whole octaves to the singer's range)",
                                               value=str(infer["transpose"]) == "auto")
                            transpose = gr.Slider(-24, 24, step=1, label="Transpose (semitones)",
                                                  value=0 if str(infer["transpose"]) == "auto" else infer["transpose"])
                        with gr.Row():
                            key = gr.Dropdown(list(KEYS), value=infer["pitch_correction"]["key"], label="Key")
                            scale = gr.Dropdown(list(SCALES), value=infer["pitch_correction"]["scale"], label="Scale")
                            strength = gr.Slider(0, 1, value=infer["pitch_correction"]["strength"],
                                                 label="Pitch correction strength (0 = off)")
                        with gr.Row():
                            retrieval = gr.Slider(0, 1, value=infer["retrieval_ratio"], label="Retrieval ratio")
                            noise = gr.Slider(0, 1, value=infer["noise_scale"], label="Noise scale")
                        convert_button = gr.Button("Convert", variant="primary", elem_id="convert-button")
                    with gr.Column():
                        convert_status = gr.HTML(elem_id="convert-status")
                        convert_summary = gr.HTML(elem_id="convert-summary")
                        song_table = gr.Dataframe(headers=["song", "status", "detail"], label="Songs",
                                                  interactive=False, elem_id="convert-songs")
                        vocal_out = gr.Audio(label="Converted vocal", type="filepath", interactive=False,
                                             elem_id="convert-vocal-out")
                        mix_out = gr.Audio(label="Mix", type="filepath", interactive=False, elem_id="convert-mix-out")
                        downloads = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                            elem_id="convert-downloads")
                        report = gr.JSON(label="Report (first song)", elem_id="convert-report")
                convert_timer = gr.Timer(refresh, active=False)

            # ================================================================================ Train
            with gr.Tab("Train", id="train"):
                train_job = gr.State(None)
                prep_job = gr.State(None)
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("**1. Recordings** of one singer (audio files or zips of them), preprocessed "
                                    "with the content encoder of the chosen base.")
                        train_singer = gr.Textbox(label="Singer name (letters, digits, _ - .)", elem_id="train-singer")
                        bases = server.base_choices()
                        train_base = gr.Dropdown(bases, value=bases[0] if bases else None, label="Base",
                                                 elem_id="train-base")
                        recordings = gr.File(label="Recordings", file_count="multiple", file_types=upload_types,
                                             elem_id="train-recordings")
                        raw_pick = gr.Dropdown(server.raw_choices(), value=None, elem_id="train-raw-pick",
                                               label=f"… or a singer folder of this machine's "
                                                     f"{server.settings.raw_dir}/ (used as it is, read only)")
                        prep_button = gr.Button("Preprocess", elem_id="prep-button")
                        prep_status = gr.HTML(elem_id="prep-status")
                        prep_report = gr.Textbox(label="Preprocess report", lines=6, interactive=False,
                                                 elem_id="prep-report")
                        pitch_plot = gr.Image(label="Pitch range", type="filepath", interactive=False)
                    with gr.Column():
                        gr.Markdown("**2. Fine-tune** an adapter on the frozen base. Stop saves a checkpoint "
                                    "(like Ctrl-C); Start again resumes from it.")
                        with gr.Row():
                            method = gr.Dropdown(stages.group_options("peft"), value="lora", label="Method")
                            steps = gr.Number(value=trainer["max_steps"], precision=0, label="Steps",
                                              elem_id="train-steps")
                            batch_size = gr.Number(value=trainer["batch_size"], precision=0, label="Batch size",
                                                   elem_id="train-batch")
                        with gr.Row():
                            learning_rate = gr.Number(value=trainer["learning_rate"], label="Learning rate")
                            discriminator = gr.Dropdown(list(DISCRIMINATOR_MODES), value=trainer["discriminator"],
                                                        label="Discriminator", elem_id="train-discriminator")
                        with gr.Row():
                            save_every = gr.Number(value=trainer["save_every"], precision=0, label="Save every (steps)",
                                                   elem_id="train-save-every")
                            eval_every = gr.Number(value=trainer["eval_every"], precision=0,
                                                   label="Sample every (steps; 0 = never)", elem_id="train-eval-every")
                        with gr.Row():
                            start_button = gr.Button("Start / resume", variant="primary", elem_id="train-start")
                            stop_button = gr.Button("Stop (saves)", variant="stop", elem_id="train-stop")
                        train_status = gr.HTML(elem_id="train-status")
                        losses = gr.Dataframe(headers=["loss", "value"], label="Losses (last step)",
                                              interactive=False, elem_id="train-losses")
                        sample_image = gr.Image(label="Validation mel (target / generated)", type="filepath",
                                                interactive=False, elem_id="train-sample-image")
                        sample_audio = gr.Audio(label="Validation sample", type="filepath", interactive=False,
                                                elem_id="train-sample-audio")
                prep_timer = gr.Timer(refresh, active=False)
                train_timer = gr.Timer(refresh, active=False)

            # ============================================================================== Singers
            with gr.Tab("Singers", id="singers"):
                refresh_button = gr.Button("Refresh", elem_id="singers-refresh")
                base_table = gr.Dataframe(server.base_rows(), label=f"Bases ({server.catalog.pretrain_dir})",
                                          headers=["base", "sha256", "speakers", "steps", "weights", "content encoder",
                                                   "problem"], interactive=False, elem_id="singers-bases")
                adapter_table = gr.Dataframe(server.adapter_rows(), label=f"Singers ({server.catalog.singers_dir})",
                                             headers=["singer", "method", "steps", "MB", "seconds of singing",
                                                      "F0 median Hz", "retrieval index", "base", "problem"],
                                             interactive=False, elem_id="singers-adapters")
                gr.Markdown("**Join tracks** end to end (in upload order) with equal-power crossfades.")
                tracks = gr.File(label="Tracks", file_count="multiple", file_types=audio_types,
                                 elem_id="concat-tracks")
                crossfade = gr.Slider(0, 10, value=0, step=0.1, label="Crossfade (seconds)")
                concat_button = gr.Button("Join", elem_id="concat-button")
                concat_status = gr.HTML(elem_id="concat-status")
                joined = gr.Audio(label="Joined", type="filepath", interactive=False)
                joined_file = gr.File(label="Download", interactive=False, elem_id="concat-download")

        # ------------------------------------------------------------------------------ Convert handlers
        def start_convert(vocal_file, stem_files, batch_files, singer_name, auto_on, semitones, key_name,
                          scale_name, strength_value, ratio, noise_value, request: gr.Request):
            token, _ = server.session(request)
            folder = None
            try:
                if not vocal_file and not batch_files:
                    raise UserError("convert", "no song given", "upload a vocal stem (or songs for a batch)")
                choices = stages.ConvertChoices(
                    singer=stages.singer_name(singer_name), transpose="auto" if auto_on else float(semitones),
                    key=str(key_name), scale=str(scale_name), strength=float(strength_value),
                    retrieval_ratio=float(ratio), noise_scale=float(noise_value))
                folder = server.workspace.new_folder(request.session_hash, "convert")
                songs_dir, output_dir = folder / "songs", folder / "outputs"
                names = []
                if vocal_file:
                    (path, filename), = _uploads(vocal_file)
                    name = display_name(filename)
                    name = "song" if name.lower() == "vocals" else name
                    take_song_folder((path, filename), _uploads(stem_files), songs_dir, name, server.settings.limits)
                    names.append(name)
                if batch_files:
                    names += [n for n in take_songs(_uploads(batch_files), songs_dir / "batch", server.settings.limits)]
                    for song in sorted((songs_dir / "batch").iterdir()):  # one folder of songs for the stage
                        song.rename(songs_dir / song.name)
                    (songs_dir / "batch").rmdir()
            except UserError as error:
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                return None, _message(one_line("convert", error), "error"), [], gr.Timer(active=False)
            song_names = sorted(p.name for p in songs_dir.iterdir())
            job = server.jobs.start("convert", token, lambda job: stages.convert_songs(songs_dir, output_dir,
                                                                                       choices, server.catalog))
            job.progress.update(output_dir=str(output_dir), songs=song_names)
            return (job.id, _job_line(job), stages.batch_status(output_dir, song_names), gr.Timer(active=True))

        def poll_convert(job_id, request: gr.Request):
            token, _ = server.session(request)
            job = server.jobs.get(job_id, token)
            if job is None:
                return (gr.skip(),) * 7 + (gr.Timer(active=False),)
            output_dir = Path(job.progress["output_dir"])
            rows = stages.batch_status(output_dir, job.progress["songs"])
            if not job.final:
                return (_job_line(job), rows) + (gr.skip(),) * 5 + (gr.Timer(active=True),)
            result = job.result
            ok = [song for song in (result.songs if result else []) if song.status == "ok"]
            detail = result.summary().splitlines()[0] if result else ""
            first = ok[0] if ok else None
            files = [path for song in ok for path in (song.outputs["vocals"], song.outputs["mix"],
                                                      song.outputs["report"])]
            return (_job_line(job, detail), rows, report_summary(first.report) if first else "",
                    first.outputs["vocals"] if first else None,
                    first.outputs["mix"] if first else None, files or None, first.report if first else None,
                    gr.Timer(active=False))

        convert_button.click(start_convert, [vocal, stems, batch, singer, auto, transpose, key, scale, strength,
                                             retrieval, noise], [convert_job, convert_status, song_table,
                                                                 convert_timer])
        convert_timer.tick(poll_convert, [convert_job], [convert_status, song_table, convert_summary, vocal_out,
                                                         mix_out, downloads, report, convert_timer])

        # -------------------------------------------------------------------------------- Train handlers
        def train_folders(folder: Path) -> tuple[Path, Path, Path]:
            train_dir = folder / "train"
            return train_dir / "raw", train_dir / "processed", train_dir / "runs"

        def start_preprocess(name, base_name, files, picked, request: gr.Request):
            token, folder = server.session(request)
            raw_dir, processed_dir, _ = train_folders(folder)
            try:
                base = server.catalog.base(str(base_name or ""))
                uploads = _uploads(files)
                if picked:  # a folder the server listed, linked into the session's recordings under its name
                    if picked not in server.raw_choices():
                        raise UserError(f"recordings folder {picked!r}", f"not a singer folder of "
                                        f"{server.settings.raw_dir}", "pick one from the list")
                    singer_value = stages.singer_name(picked)
                    link = raw_dir / singer_value
                    if uploads or (link.exists() and not link.is_symlink()):
                        raise UserError(f"recordings folder {picked!r}", "recordings were also uploaded for "
                                        "this singer", "upload recordings or pick a folder, not both")
                    raw_dir.mkdir(parents=True, exist_ok=True)
                    if not link.is_symlink():
                        link.symlink_to((Path(server.settings.raw_dir) / picked).resolve(), target_is_directory=True)
                else:
                    singer_value = stages.singer_name(name)
                    if not uploads and not (raw_dir / singer_value).is_dir():
                        raise UserError("recordings", "none uploaded", "upload audio files (or zips of them), or "
                                        "pick a folder")
                    take_recordings(uploads, raw_dir / singer_value, server.settings.limits)
            except UserError as error:
                return None, _message(one_line("preprocess", error), "error"), gr.Timer(active=False), gr.skip()
            job = server.jobs.start("preprocess", token, lambda job: stages.preprocess(raw_dir, processed_dir, base))
            job.progress.update(singer=singer_value, processed=str(processed_dir))
            return job.id, _job_line(job), gr.Timer(active=True), singer_value

        def poll_preprocess(job_id, request: gr.Request):
            token, _ = server.session(request)
            job = server.jobs.get(job_id, token)
            if job is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
            if not job.final:
                return _job_line(job), gr.skip(), gr.skip(), gr.Timer(active=True)
            result = job.result
            plot = Path(job.progress["processed"]) / job.progress["singer"] / "pitch_range.png"
            summary = result.summary() if result is not None else "\n".join(job.log_lines[-10:])
            return (_job_line(job, f"{result.n_clips} clips" if result is not None else ""), summary,
                    str(plot) if plot.is_file() else None, gr.Timer(active=False))

        prep_button.click(start_preprocess, [train_singer, train_base, recordings, raw_pick],
                          [prep_job, prep_status, prep_timer, train_singer])
        prep_timer.tick(poll_preprocess, [prep_job], [prep_status, prep_report, pitch_plot, prep_timer])

        def start_training(current, name, base_name, method_name, max_steps, batch, lr, disc, save, evaluate,
                           request: gr.Request):
            token, folder = server.session(request)
            _, processed_dir, runs_dir = train_folders(folder)
            try:
                singer_value = stages.singer_name(name)
                choices = stages.TrainChoices(
                    singer=singer_value, base=str(base_name or ""), method=str(method_name),
                    max_steps=int(max_steps or 0), batch_size=int(batch or 0), learning_rate=float(lr or 0),
                    discriminator=str(disc), save_every=int(save or 0), eval_every=int(evaluate or 0),
                    num_workers=int(server.settings.train_num_workers))
                taken = next((a for a in server.catalog.adapters() if a.name == singer_value), None)
                if taken is not None and not (runs_dir / singer_value).is_dir():  # not this page's own run
                    raise UserError(f"singer {singer_value!r}", f"a singer of that name exists ({taken.path})",
                                    "choose another name for the new singer")
                if not (processed_dir / "manifest.jsonl").is_file():
                    raise UserError("train", "nothing preprocessed yet", "upload recordings and press Preprocess")
                running = server.jobs.get(current, token)
                if running is not None and not running.final:
                    raise UserError("train", "a fine-tune of this page is running", "stop it first")
                config = stages.train_config(processed_dir, runs_dir, choices, server.catalog)
            except UserError as error:
                return None, _message(one_line("train", error), "error"), gr.Timer(active=False)

            def work(job: Job):
                def on_step(step: int, values: dict[str, float]) -> None:
                    job.progress.update(step=step, losses={k: float(v) for k, v in values.items()})
                    if job.stop_asked:
                        raise KeyboardInterrupt  # the loop saves a checkpoint, as on Ctrl-C

                result = stages.finetune(config, on_step)
                job.progress.update(step=result.step, interrupted=result.interrupted)
                return result

            job = server.jobs.start("train", token, work)
            job.progress.update(step=0, max_steps=choices.max_steps, run_dir=str(runs_dir / singer_value))
            return job.id, _job_line(job), gr.Timer(active=True)

        def stop_training(job_id, request: gr.Request):
            token, _ = server.session(request)
            job = server.jobs.get(job_id, token)
            if job is not None and not job.final:
                job.stop()
                return _message("train: stopping after this step; a checkpoint is saved", "info")
            return gr.skip()

        def poll_training(job_id, request: gr.Request):
            token, _ = server.session(request)
            job = server.jobs.get(job_id, token)
            if job is None:
                return (gr.skip(),) * 5 + (gr.Timer(active=False),)
            progress, status = job.progress, job.status
            detail = f"step {progress.get('step', 0)} of {progress.get('max_steps')}"
            if status == STOPPED:
                detail += "; checkpoint saved — Start / resume continues from it"
            elif status == DONE and job.result is not None and job.result.artifact_dir is not None:
                detail += f"; adapter written to {job.result.artifact_dir} (see Singers)"
            rows = [[k, round(v, 4)] for k, v in sorted(progress.get("losses", {}).items())]
            image = audio = gr.skip()
            run_dir = Path(progress["run_dir"])
            events = sorted(run_dir.glob("events.out.tfevents.*")) if run_dir.is_dir() else []
            seen = [(p.name, p.stat().st_size) for p in events]
            if seen != progress.get("events_seen"):  # read TensorBoard's events only when they grew
                progress["events_seen"] = seen
                sample = stages.latest_samples(run_dir)
                if sample.get("image"):
                    image = str(_write_sample(run_dir, "sample.png", sample["image"]))
                if sample.get("audio"):
                    audio = str(_write_sample(run_dir, "sample.wav", sample["audio"]))
            singers_update = gr.Dropdown(choices=server.singer_choices()) if status == DONE else gr.skip()
            return (_job_line(job, detail, status), rows or gr.skip(), image, audio, singers_update,
                    gr.Timer(active=status not in FINAL))

        start_button.click(start_training, [train_job, train_singer, train_base, method, steps, batch_size, learning_rate,
                                            discriminator, save_every, eval_every], [train_job, train_status,
                                                                                     train_timer])
        stop_button.click(stop_training, [train_job], [train_status])
        train_timer.tick(poll_training, [train_job], [train_status, losses, sample_image, sample_audio, singer,
                                                      train_timer])

        # ------------------------------------------------------------------------------ Singers handlers
        def refresh_catalog():
            return (server.base_rows(), server.adapter_rows(), gr.Dropdown(choices=server.singer_choices()),
                    gr.Dropdown(choices=server.base_choices()), gr.Dropdown(choices=server.raw_choices()))

        refresh_button.click(refresh_catalog, None, [base_table, adapter_table, singer, train_base, raw_pick])
        app.load(refresh_catalog, None, [base_table, adapter_table, singer, train_base, raw_pick])

        def join_tracks(files, seconds, request: gr.Request):
            _, _ = server.session(request)
            try:
                folder = server.workspace.new_folder(request.session_hash, "concat")
                paths = [take_audio(path, filename, folder, f"track{i:02d}", server.settings.limits)
                         for i, (path, filename) in enumerate(_uploads(files), start=1)]
                result = stages.concat(paths, folder / "joined.wav", float(seconds))
            except (UserError, ValueError) as error:
                return _message(one_line("concat", error), "error"), None, None
            text = f"joined {len(paths)} tracks: {result.seconds:.2f} s, {result.sample_rate} Hz"
            text += "".join(f"\nwarning: {w}" for w in result.warnings)
            return _message(text, "done"), str(result.path), str(result.path)

        concat_button.click(join_tracks, [tracks, crossfade], [concat_status, joined, joined_file])
        def close(request: gr.Request):
            server.close_session(request)

        app.unload(close)
    return app


def page_style(gr) -> tuple[Any, str]:
    """The theme (system fonts: the page loads nothing from the internet) and the status lines' colours."""
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    css = ".ais-error{color:#b00020;font-weight:600} .ais-done{color:#1b5e20} .ais-info{color:#333}"
    return theme, css


def _write_sample(run_dir: Path, name: str, data: bytes) -> Path:
    """A validation sample read from TensorBoard, as a file the page can show."""
    from ai_singer.atomic import atomic_write

    path = run_dir / "ui" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        handle.write(data)
    return path


def launch(settings: UiSettings, block: bool = True):
    """Build and start the app on ``settings.host:settings.port`` (never a share link); returns
    ``(app, server, url)``. ``block``: serve until interrupted, then clean up."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ai_singer.device import widen_cpu_kernel_cache

    widen_cpu_kernel_cache()  # before the jobs' first convolution (preprocessing may come before conversion)
    server = Server(settings)
    os.environ["GRADIO_TEMP_DIR"] = str(server.workspace.root / "gradio")  # uploads land in the working folder
    app = build_app(server)
    theme, css = page_style(_require_gradio())
    app.queue(default_concurrency_limit=8)
    _, url, _ = app.launch(server_name=settings.host, server_port=int(settings.port) or None, share=False,
                           max_file_size=f"{int(settings.max_upload_mb)}mb", prevent_thread_lock=True,
                           allowed_paths=[str(server.workspace.root / "sessions")], ssr_mode=False, quiet=True,
                           show_error=False, inbrowser=False, theme=theme, css=css,
                           footer_links=[])
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
            server.shutdown()
    return app, server, url
