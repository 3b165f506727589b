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

import importlib
import os
import re
import unicodedata
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install -e '.[eval]'"
WHISPER_RATE = 16000
#: Wheels shipping Whisper in CTranslate2 format: name -> (package, files inside it).
WHISPER_MODELS = ("base", "tiny.en")


class EvalExtraMissing(ImportError):
    """A package of the ``eval`` extra (or a file it should ship) is missing."""


def _require(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise EvalExtraMissing(f"{what} needs the Python package {module.split('.')[0]!r}, which does not import "
                               f"({error}); install the measuring extra: {INSTALL_HINT}") from error


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

def whisper_model_dir(name: str = "base", cache_dir: str | os.PathLike | None = None) -> Path:
    """The CTranslate2 folder of Whisper ``name`` (``base`` or ``tiny.en``) from the installed wheels — the
    package's own locator (:func:`ai_singer.features.whisper_models.wheel_model_dir`: ``tiny.en`` in place,
    ``base`` joined from its two wheels once into the cache). Nothing is downloaded."""
    from ai_singer.features.whisper_models import wheel_model_dir

    if name not in WHISPER_MODELS:
        raise ValueError(f"unknown Whisper model {name!r}: the wheels ship {', '.join(WHISPER_MODELS)}")
    return wheel_model_dir(name, cache_dir)


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
    from ai_singer.features.f0_settings import F0Settings
    from ai_singer.features.pitch import extract_f0

    x = np.asarray(audio, dtype=np.float32)
    if int(sr) != int(f0_sr):
        x = resample(x, int(sr), int(f0_sr))
    return extract_f0(x.astype(np.float64), int(f0_sr), int(hop), int(n_frames),
                      F0Settings.from_conf(method=method, f0_min=f0_min, f0_max=f0_max))


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
