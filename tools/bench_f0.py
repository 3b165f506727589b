"""F0 accuracy and speed of every F0 method, on audio whose F0 is known exactly.

    .venv/bin/python tools/bench_f0.py [--real data/real] [--phrases 3] [--no-write]

Synthetic singing (``tools/synth``: the source-filter singer, intended F0 at 50 Hz labels) in ordinary
phrases and in the hard cases a tracker meets in songs: a soprano above C6, a bass below E2, breathy
onsets, fast runs, wide vibrato, octave leaps, and the accompaniment (pad + drums, ``tools/synth``) bleeding
in at -20 and -10 dB; and the real-voice corpus's sung eval phrases (``tools/real_corpus.py``: real speech
sung by WORLD with an exact imposed F0), when ``--real`` holds one. Every method runs through
``extract_f0`` with ``conf/f0``'s range, thresholds and post-processing, and once more with octave repair
and median smoothing on (``+post``). Speed: x real time of ``extract_f0`` on 30 s of 44.1 kHz singing at
the model framing (hop 512), with 1 and 2 torch / onnxruntime threads.

Prints a markdown table and writes it into BENCHMARKS.md under "## F0" (other sections are kept).
``rmvpe`` is measured when the user's ``rmvpe.pt`` is at ``f0.rmvpe_path`` (it ships in no package);
``--rmvpe-speed`` times it without one, on a random network of the published size (speed does not depend on
the weights' values; accuracy does, so nothing else is measured), prints the numbers and writes nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.benchmarks_md import machine_description, replace_section  # noqa: E402

SR = 44100
#: Post-processing of the "+post" rows (conf/f0 keys).
POST = {"octave_repair_ms": 300.0, "median_ms": 30.0}
#: The soprano case is also searched up to HIGH_F0_MAX Hz by every method (conf/f0's f0_max cuts its top off).
HIGH, HIGH_F0_MAX = "soprano above C6 (f0_max 1600)", 1600.0
HARD = ("soprano above C6", "bass below E2", "breathy onsets", "fast runs", "wide vibrato", "octave leaps",
        "bleed -20 dB", "bleed -10 dB")


# ------------------------------------------------------------------------------------------ metrics

def f0_accuracy(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MIREX-style F0 metrics of ``estimate`` against ``truth`` (Hz [frames] each, 0 = unvoiced), as counts
    so that cases can be pooled (:func:`rates`).

    Raw pitch / chroma: truth-voiced frames the estimate calls voiced within 50 cents (chroma: after folding
    the error into one octave); an estimate that calls a voiced frame unvoiced has no pitch there and
    counts as wrong. Gross / octave errors: over frames voiced in both, more than 50 cents off / off by
    a whole number of octaves (within 50 cents of one). Voicing recall / false alarm: truth-voiced frames
    called voiced / truth-unvoiced frames called voiced. Median cents: over the frames within 50 cents.
    """
    estimate, truth = np.asarray(estimate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    n = min(len(estimate), len(truth))
    estimate, truth = estimate[:n], truth[:n]
    voiced, called = truth > 0, estimate > 0
    both = voiced & called
    cents = np.zeros(n)
    cents[both] = 1200.0 * np.log2(estimate[both] / truth[both])
    folded = np.abs(cents - 1200.0 * np.round(cents / 1200.0))
    within = both & (np.abs(cents) <= 50.0)
    return {"voiced": float(voiced.sum()), "unvoiced": float((~voiced).sum()), "both": float(both.sum()),
            "pitch_ok": float(within.sum()), "chroma_ok": float((both & (folded <= 50.0)).sum()),
            "gross": float((both & (np.abs(cents) > 50.0)).sum()),
            "octave": float((both & (np.abs(cents) > 600.0) & (folded <= 50.0)).sum()),
            "called_voiced": float((voiced & called).sum()), "false_alarm": float((~voiced & called).sum()),
            "cents_ok": list(np.abs(cents[within]))}


def pool(counts: list[dict]) -> dict:
    """Sum of several :func:`f0_accuracy` results."""
    total: dict = {}
    for one in counts:
        for key, value in one.items():
            total[key] = total.get(key, [] if isinstance(value, list) else 0.0) + value
    return total


def rates(counts: dict) -> dict[str, float]:
    """Shares (0..1) and the median cents from pooled counts: rpa, rca, gross, octave, recall, false_alarm,
    median_cents."""
    def share(a: str, b: str) -> float:
        return counts[a] / counts[b] if counts[b] else float("nan")

    return {"rpa": share("pitch_ok", "voiced"), "rca": share("chroma_ok", "voiced"), "gross": share("gross", "both"),
            "octave": share("octave", "both"), "recall": share("called_voiced", "voiced"),
            "false_alarm": share("false_alarm", "unvoiced"),
            "median_cents": float(np.median(counts["cents_ok"])) if counts["cents_ok"] else float("nan")}


# ----------------------------------------------------------------------------------------- corpora

def _synth():
    from tools.synth import accompaniment, corpus, melody, singers, voice

    return accompaniment, corpus, melody, singers, voice


def _scripted_phrase(melody, phrase_id: str, degrees: list, beats: float, tempo: float, rng, onsets=None):
    """A phrase of the given scale degrees (None = rest), each ``beats`` long, one syllable per note."""
    notes, beat = [], 0.0
    for degree in degrees:
        if degree is None:
            notes.append(melody.Note(beat, beats, None, ()))
        else:
            onset = (str(rng.choice(onsets)),) if onsets else ((str(rng.choice(("l", "m", "n"))),)
                                                               if rng.random() < 0.5 else ())
            notes.append(melody.Note(beat, beats, int(degree), onset + (str(rng.choice(("a", "o", "e"))),)))
        beat += beats
    return melody.Phrase(phrase_id, tempo, "major", 0, (0, 3, 4, 0), tuple(notes), 0.3, 0.4)


def synthetic_cases(phrases: int, seed: int = 0):
    """``{case: [(audio float32 [n] at SR, truth Hz [frames], hop)]}``: truth frame ``i`` is centred at
    ``(i + 0.5) * hop / SR`` (the synthesiser's 50 Hz labels)."""
    accompaniment, corpus, melody, singers_module, voice = _synth()
    cases: dict[str, list] = {}

    def singer(index: int, rng, **changes):
        return dataclasses.replace(singers_module.make_singer(index, rng), **changes)

    def render(name: str, phrase, sung_by, rng, bleed_db: float | None = None) -> None:
        rendition = voice.render_phrase(phrase, sung_by, SR, rng)
        audio = rendition.audio.astype(np.float64)
        if bleed_db is not None:
            n = len(audio)
            band = (accompaniment.pad_stem(phrase, sung_by.tonic_midi, n, SR, rng)
                    + accompaniment.drum_stem(phrase, n, SR, rng))
            vocal_rms = np.sqrt(np.mean(audio[rendition.f0_hz.repeat(rendition.label_hop)[:n] > 0] ** 2))
            audio = audio + band * vocal_rms / max(np.sqrt(np.mean(band ** 2)), 1e-9) * 10 ** (bleed_db / 20)
            audio *= 0.95 / max(0.95, np.abs(audio).max())
        cases.setdefault(name, []).append((audio.astype(np.float32), rendition.f0_hz, rendition.label_hop))

    for p in range(phrases):
        rng = np.random.default_rng([seed, p])
        for k in range(6):  # one ordinary phrase per voice type
            render("ordinary (6 voice types)", melody.make_phrase(rng, f"o{p}{k}", 4.0), singer(k, rng), rng)
        soprano = singer(0, rng, tonic_midi=84.0 + rng.uniform(0, 1))  # C6 and up: C6-G6, 1047-1568 Hz
        render("soprano above C6", _scripted_phrase(melody, f"s{p}", list(rng.permutation([0, 1, 2, 4, 2, 1, 0, 3])),
                                                    1.0, 100.0, rng), soprano, rng)
        bass = singer(1, rng, tonic_midi=38.0 + rng.uniform(-1, 0))  # ~D2: A1-E2 and below, 55-82 Hz
        render("bass below E2", _scripted_phrase(melody, f"b{p}", list(rng.permutation([-3, -2, -1, 0, 1, 0, -1, -3])),
                                                 1.0, 90.0, rng), bass, rng)
        breathy = singer(2 + p % 4, rng, breathiness=1.0)
        render("breathy onsets", _scripted_phrase(melody, f"h{p}", [0, 2, None, 4, 3, None, 1, 0], 1.0, 96.0, rng,
                                                  onsets=("f", "s", "sh")), breathy, rng)
        runs = [d for d in (0, 1, 2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1, 0, 2, 4, 7, 4, 2, 0)]
        render("fast runs", _scripted_phrase(melody, f"r{p}", runs, 0.25, 150.0, rng),
               singer(p % 6, rng, portamento_s=0.02, vibrato_depth_cents=0.0), rng)
        render("wide vibrato", melody.make_phrase(rng, f"v{p}", 4.0),
               singer((p + 3) % 6, rng, vibrato_depth_cents=150.0, vibrato_rate_hz=6.5, vibrato_onset_s=0.05), rng)
        render("octave leaps", _scripted_phrase(melody, f"l{p}", [0, 7, 0, 7, 14, 7, 0, -7, 0], 0.5, 100.0, rng),
               singer(p % 6, rng, tonic_midi=50.0 + 6 * (p % 3)), rng)
        for bleed in (-20.0, -10.0):
            render(f"bleed {bleed:.0f} dB", melody.make_phrase(rng, f"a{p}{bleed:.0f}", 4.0), singer((p + 1) % 6, rng),
                   rng, bleed_db=bleed)
    return cases


def real_cases(root: Path) -> list:
    """The real-voice corpus's sung eval phrases with an imposed F0: [(audio, truth, hop)] at SR."""
    from ai_singer.audio import load_audio, resample, to_mono

    found = []
    for meta_path in sorted((root / "eval").glob("*/*.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("kind") != "sung" or not meta.get("f0_file"):
            continue
        f0_path = meta_path.with_name(str(meta["f0_file"]))
        if not f0_path.is_file():
            continue
        audio, rate = load_audio(meta_path.with_suffix(".wav"))
        audio = resample(to_mono(audio), rate, SR)
        if int(meta["f0_sr"]) != SR:
            raise ValueError(f"{meta_path}: F0 labelled at {meta['f0_sr']} Hz, expected {SR}")
        found.append((audio.astype(np.float32), np.load(f0_path).astype(np.float64), int(meta["f0_hop"])))
    return found


# ------------------------------------------------------------------------------------------ running

def methods() -> list[tuple[str, object]]:
    """(row label, F0Settings) for every method, plain (conf/f0) and with POST; methods whose package is
    missing are left out (named on stderr)."""
    from ai_singer.errors import UserError
    from ai_singer.features.f0_settings import F0Settings
    from ai_singer.features.pitch import F0_EXTRACTORS, extract_f0

    rows = []
    for method in F0_EXTRACTORS:
        settings = F0Settings.from_conf(method=method)
        try:
            extract_f0(np.zeros(SR // 2, dtype=np.float32), SR, 512, None, settings)
        except UserError as error:
            print(f"skipped {method}: {error}", file=sys.stderr)
            continue
        rows.append((method, settings))
        rows.append((f"{method}+post", dataclasses.replace(settings, **POST)))
    return rows


def accuracy(cases: dict[str, list], rows: list) -> dict[str, dict[str, dict]]:
    """``{label: {case: pooled counts}}``."""
    from ai_singer.features.pitch import extract_f0

    table: dict[str, dict[str, dict]] = {}
    for label, settings in rows:
        started = time.perf_counter()
        for case, items in cases.items():
            used = dataclasses.replace(settings, f0_max=max(settings.f0_max, HIGH_F0_MAX)) if case == HIGH else settings
            table.setdefault(label, {})[case] = pool([
                f0_accuracy(extract_f0(audio, SR, hop, len(truth), used), truth) for audio, truth, hop in items])
        print(f"{label}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return table


def threshold_sweep(cases: dict[str, list], thresholds: dict[str, list[float]]) -> dict[str, dict[float, dict]]:
    """``{method: {threshold: pooled counts over every case}}`` for the trackers that score their confidence:
    each clip is tracked once and the voicing threshold applied afterwards."""
    from ai_singer.errors import UserError
    from ai_singer.features import pitch
    from ai_singer.features.f0_settings import F0Settings

    found: dict[str, dict[float, dict]] = {}
    for method, values in thresholds.items():
        tracker, memo = pitch.F0_EXTRACTORS[method], {}

        def cached(wav, sr, f0_min, f0_max, step_s, settings=None, tracker=tracker, memo=memo):
            key = (len(wav), float(np.sum(wav[::101])))
            if key not in memo:
                memo[key] = tracker(wav, sr, f0_min, f0_max, step_s, settings)
            return memo[key]

        pitch.F0_EXTRACTORS[method] = cached
        try:
            for value in values:
                settings = F0Settings.from_conf(method=method, voicing_threshold={method: value})
                found.setdefault(method, {})[value] = pool([
                    f0_accuracy(pitch.extract_f0(audio, SR, hop, len(truth), settings), truth)
                    for items in cases.values() for audio, truth, hop in items])
        except UserError as error:
            print(f"skipped the {method} threshold sweep: {error}", file=sys.stderr)
        finally:
            pitch.F0_EXTRACTORS[method] = tracker
    return found


def sweep_table(sweep: dict[str, dict[float, dict]]) -> str:
    lines = ["| method | voicing threshold | RPA % | voicing recall % | false alarm % |", "|---|---:|---:|---:|---:|"]
    for method, by_value in sweep.items():
        for value, counts in by_value.items():
            r = rates(counts)
            lines.append(f"| {method} | {value:g} | {_pct(r['rpa'])} | {_pct(r['recall'])} | {_pct(r['false_alarm'])} |")
    return "\n".join(lines)


def random_rmvpe_rows(folder: Path) -> list[tuple[str, object]]:
    """A row timing RMVPE with random weights of the published size and format (float16, 181 MB) written to
    ``folder``: for speed only."""
    import torch

    from ai_singer.features.f0_settings import F0Settings
    from ai_singer.features.rmvpe_model import Rmvpe

    torch.manual_seed(0)
    state = {key: value.half() if value.is_floating_point() else value for key, value in Rmvpe().state_dict().items()}
    torch.save(state, folder / "rmvpe.pt")
    return [("rmvpe (random weights)", F0Settings.from_conf(method="rmvpe", rmvpe_path=str(folder / "rmvpe.pt")))]


def speed(rows: list, seconds: float = 30.0) -> dict[str, dict[int, float]]:
    """x real time of extract_f0 at the model framing (hop 512 at 44.1 kHz) with 1 and 2 threads."""
    import torch

    from ai_singer.features.pitch import extract_f0

    cases = synthetic_cases(1, seed=99)["ordinary (6 voice types)"]
    audio = np.concatenate([a for a, _, _ in cases] * 4)[: int(seconds * SR)]
    found: dict[str, dict[int, float]] = {}
    before = torch.get_num_threads()
    for label, settings in rows:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            extract_f0(audio[:SR], SR, 512, None, settings)  # warm-up: model load, session start
            started = time.perf_counter()
            extract_f0(audio, SR, 512, None, settings)
            found.setdefault(label, {})[threads] = len(audio) / SR / (time.perf_counter() - started)
    torch.set_num_threads(before)
    return found


# ------------------------------------------------------------------------------------------ report

def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def accuracy_table(table: dict[str, dict[str, dict]], groups: dict[str, list[str]], speeds: dict) -> str:
    lines = ["| method | corpus | RPA % | RCA % | gross % | octave % | voicing recall % | false alarm % | "
             "median cents | x real time (1 / 2 threads) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, by_case in table.items():
        for group, members in groups.items():
            present = [by_case[m] for m in members if m in by_case]
            if not present:
                continue
            r = rates(pool(present))
            fast = speeds.get(label, {})
            speed_text = f"{fast[1]:.0f} / {fast[2]:.0f}" if group == next(iter(groups)) and fast else ""
            lines.append(f"| {label} | {group} | {_pct(r['rpa'])} | {_pct(r['rca'])} | {_pct(r['gross'])} | "
                         f"{_pct(r['octave'])} | {_pct(r['recall'])} | {_pct(r['false_alarm'])} | "
                         f"{r['median_cents']:.1f} | {speed_text} |")
    return "\n".join(lines)


def case_table(table: dict[str, dict[str, dict]], cases: list[str]) -> str:
    lines = ["| method | " + " | ".join(cases) + " |", "|---|" + "---:|" * len(cases)]
    for label, by_case in table.items():
        cells = []
        for case in cases:
            r = rates(by_case[case])
            cells.append(f"{_pct(r['rpa'])} / {_pct(r['octave'])}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phrases", type=int, default=3, help="phrases per synthetic case")
    parser.add_argument("--real", type=Path, default=REPO / "data" / "real",
                        help="real-voice corpus folder (tools/real_corpus.py); skipped when missing")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--rmvpe-speed", action="store_true",
                        help="only time rmvpe on a random network of the published size (no rmvpe.pt needed)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    if args.rmvpe_speed:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            for label, by_threads in speed(random_rmvpe_rows(Path(folder))).items():
                print(f"{label}: x real time {by_threads[1]:.1f} (1 thread) / {by_threads[2]:.1f} (2 threads); "
                      f"load average {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
                      f"{machine_description(threads=1)}")
        return
    cases = synthetic_cases(args.phrases)
    cases[HIGH] = cases["soprano above C6"]  # the same audio, searched up to HIGH_F0_MAX
    real = real_cases(args.real) if (args.real / "eval").is_dir() else []
    if real:
        cases["real voices, sung (WORLD)"] = real
    rows = methods()
    table = accuracy(cases, rows)
    sweep = threshold_sweep({case: items for case, items in cases.items() if case != HIGH},
                            {"swift": [0.2, 0.3, 0.4, 0.5, 0.6], "fcpe": [0.006, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                             "crepe_tiny": [0.1, 0.2, 0.3, 0.4, 0.5], "rmvpe": [0.01, 0.03, 0.05, 0.1, 0.2, 0.3]})
    speeds = speed(rows)
    load_after = os.getloadavg()[0]
    synthetic = [c for c in cases if c != "real voices, sung (WORLD)"]
    groups = {"hard cases": list(HARD), f"hard, soprano to {HIGH_F0_MAX:.0f} Hz": [HIGH, *HARD[1:]],
              "ordinary": ["ordinary (6 voice types)"]}
    if real:
        groups["real voices"] = ["real voices, sung (WORLD)"]
    audio_s = {case: sum(len(a) for a, _, _ in items) / SR for case, items in cases.items()}
    if args.json:
        args.json.write_text(json.dumps({label: {case: rates(c) for case, c in by_case.items()}
                                         for label, by_case in table.items()} | {"speed": speeds}, indent=1))
    body = "\n".join([
        "F0 accuracy on audio whose F0 is known exactly, and speed, measured with `tools/bench_f0.py` "
        f"({args.phrases} synthetic phrases per case, {sum(audio_s[c] for c in synthetic):.0f} s in all"
        + (f"; {len(real)} real-voice sung phrases, {audio_s['real voices, sung (WORLD)']:.0f} s" if real else "")
        + "). Every method runs through `extract_f0` with conf/f0's range and voicing thresholds; `+post` "
        "adds octave repair (300 ms) and median smoothing (30 ms). The soprano phrases (C6-G6, 1047-1568 Hz) "
        f"are measured twice: with conf/f0's f0_max as every user gets it (\"hard cases\") and searched up to "
        f"{HIGH_F0_MAX:.0f} Hz (the second group), which is what the trackers themselves can do.",
        "",
        f"- Machine: {machine_description(threads=1)}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Load average (1 min) {load_before:.1f} before / {load_after:.1f} after on {os.cpu_count()} CPUs"
        + (" (a shared machine: speeds are pessimistic)" if max(load_before, load_after) > 0.5 * (os.cpu_count() or 1)
           else ""),
        "",
        accuracy_table(table, groups, speeds),
        "",
        "Voicing threshold of the trackers that score their confidence (`f0.voicing_threshold.<method>`), "
        "every case pooled (synthetic and real):",
        "",
        sweep_table(sweep),
        "",
        "By case, raw pitch accuracy % / octave errors %:",
        "",
        case_table(table, list(cases)),
        "",
        "RPA: share of the truly voiced frames called voiced within 50 cents; RCA: the same with the error "
        "folded into one octave; gross: frames voiced in both but more than 50 cents off; octave: frames voiced in "
        "both off by a whole number of octaves (within 50 cents of one); voicing recall / false alarm: truly "
        "voiced / unvoiced frames called voiced; median cents over the frames within 50 cents. Frames are the "
        "synthesiser's 50 Hz labels (the real corpus: hop 512 at 44.1 kHz). Speed: x real time of `extract_f0` on "
        "30 s of 44.1 kHz singing at the model framing (hop 512), after a warm-up, with 1 and 2 torch / "
        "onnxruntime threads.",
    ])
    print(body)
    if not args.no_write:
        replace_section(REPO / "BENCHMARKS.md", "F0", body)


if __name__ == "__main__":
    main()
