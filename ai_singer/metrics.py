"""Objective measures of a conversion: timbre distance, pitch accuracy, speaker identity.

Three measures, each usable alone (numpy in, numbers out; no training code here):

* **Mel-cepstral distortion (MCD, dB)** between two signals. Each signal is analysed with WORLD:
  F0 (``ai_singer.features.pitch.extract_f0``) for the voicing mask and the pitch-adaptive window, then
  CheapTrick's spectral envelope per frame. The envelope's log amplitude is resampled onto a
  frequency axis warped by a first-order all-pass (``alpha`` fitted to the mel scale for the sample
  rate, :func:`mel_warping_alpha`) and turned into a cepstrum ``c_0..c_D`` with
  ``ln|H(b)| = c_0 + 2 sum_d c_d cos(d b)``. Per frame,
  ``MCD = 10 / ln(10) * sqrt(2 * sum_{d=1..D} (c_d - c'_d)^2)`` (the usual definition: ``c_0``,
  the level, is left out, so a gain change costs nothing). The clip's MCD is the mean over the frames
  voiced in both signals, compared frame by frame (parallel renditions with identical timing) or along
  a DTW path (``align="dtw"``, for signals that are not time-aligned).
* **F0 error in cents** of a signal's F0 against an intended contour, on frames voiced in both, plus
  voicing agreement (fraction of all frames where both agree on voiced/unvoiced).
* **Speaker classifier**: a clip's timbre features are the mean and standard deviation over its
  voiced frames of the mel-cepstrum ``c_1..c_D`` (:func:`clip_timbre_features`); a standardised
  multinomial logistic regression (scikit-learn, imported lazily) trained on clips of known singers
  gives P(singer | clip) (:class:`SpeakerClassifier`). Its probabilities only compare the known singers:
  for audio unlike all of them (a broken conversion) they extrapolate and can be high for no good reason,
  so read them beside a measure against real renditions (MCD).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

#: 10 / ln(10) * sqrt(2): the MCD constant (dB) applied to the Euclidean cepstral distance.
MCD_CONSTANT = 10.0 / math.log(10.0) * math.sqrt(2.0)

ALIGNMENTS = ("frames", "dtw")


def _conf_f0() -> dict:
    """``conf/f0/default.yaml``: the F0 method and search range the toolkit uses."""
    from ai_singer.config import conf_group

    return conf_group("f0")


@dataclass(frozen=True)
class TimbreSettings:
    """How signals are analysed for MCD and the speaker features.

    n_coeffs:  mel-cepstral coefficients ``c_1..c_D`` compared (``c_0``, the level, is always ignored).
    frame_s:   analysis hop in seconds (frame ``i`` centred at ``(i + 0.5) * hop / sr``).
    f0_method: F0 extractor for the voicing mask and CheapTrick's window (``dio`` is fast; ``harvest``
               is more robust in noise).
    f0_min, f0_max: F0 search range in Hz; by default the range of ``conf/f0`` (the one place it is written).
    """

    n_coeffs: int = 24
    frame_s: float = 0.01
    f0_method: str = "dio"
    f0_min: float = field(default_factory=lambda: _conf_f0()["f0_min"])
    f0_max: float = field(default_factory=lambda: _conf_f0()["f0_max"])

    def __post_init__(self) -> None:
        if self.n_coeffs < 1:
            raise ValueError(f"n_coeffs must be >= 1, got {self.n_coeffs}")
        if not self.frame_s > 0:
            raise ValueError(f"frame_s must be > 0, got {self.frame_s}")

    def hop(self, sr: int) -> int:
        """The hop in samples at rate ``sr``."""
        return max(1, int(round(self.frame_s * sr)))


# ------------------------------------------------------------------------------------ mel-cepstrum

@functools.lru_cache(maxsize=16)
def mel_warping_alpha(sr: int) -> float:
    """All-pass warping factor whose warped frequency axis best matches the mel scale up to ``sr / 2``.

    Least squares over ``alpha`` in steps of 0.001 between the normalised warped frequency and the
    normalised mel scale ``ln(1 + f / 700)``: about 0.46 at 16 kHz and 0.59 at 44.1 kHz."""
    freqs = np.linspace(0.0, sr / 2.0, 1000)
    omega = 2.0 * np.pi * freqs / sr
    mel = np.log1p(freqs / 700.0)
    mel /= mel[-1]
    alphas = np.arange(0.0, 0.9, 0.001)
    warped = _warp(omega[None, :], alphas[:, None]) / np.pi
    errors = np.mean((warped - mel[None, :]) ** 2, axis=1)
    return float(round(alphas[int(np.argmin(errors))], 3))


def _warp(omega: np.ndarray, alpha) -> np.ndarray:
    """Phase of the first-order all-pass ``(z^-1 - alpha) / (1 - alpha z^-1)``: maps [0, pi] onto [0, pi]."""
    return omega + 2.0 * np.arctan(alpha * np.sin(omega) / (1.0 - alpha * np.cos(omega)))


@functools.lru_cache(maxsize=16)
def _cepstrum_basis(n_bins: int, n_coeffs: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Where to read the envelope (fractional linear-frequency bin of each point of a uniform grid on
    the warped axis) and the cosine-transform matrix ``[n_coeffs + 1, points]`` that gives ``c_0..c_D``."""
    points = 4 * (n_bins - 1) + 1
    warped = np.linspace(0.0, np.pi, points)
    omega = _warp(warped, -alpha)  # the inverse warp is the all-pass with -alpha
    bins = np.clip(omega / np.pi * (n_bins - 1), 0.0, n_bins - 1)
    weights = np.full(points, warped[1] - warped[0])  # trapezoid rule over [0, pi]
    weights[[0, -1]] *= 0.5
    basis = np.cos(np.arange(n_coeffs + 1)[:, None] * warped[None, :]) * weights[None, :] / np.pi
    return bins, basis


def envelope_to_mel_cepstrum(power_envelope: np.ndarray, sr: int, n_coeffs: int = 24,
                             alpha: float | None = None) -> np.ndarray:
    """Mel-cepstrum of spectral envelopes.

    Args:
        power_envelope: ``[frames, n_fft // 2 + 1]`` power spectral envelope (e.g. CheapTrick's).
        sr: sample rate of the analysed signal.
        n_coeffs: highest cepstral index ``D``.
        alpha: all-pass warping factor; default :func:`mel_warping_alpha` of ``sr``.
    Returns:
        float64 ``[frames, n_coeffs + 1]``: ``c_0..c_D`` of the natural-log amplitude on the warped axis.
    """
    envelope = np.asarray(power_envelope, dtype=np.float64)
    if envelope.ndim != 2 or envelope.shape[1] < 2:
        raise ValueError(f"power_envelope must be [frames, bins >= 2], got shape {envelope.shape}")
    alpha = mel_warping_alpha(int(sr)) if alpha is None else float(alpha)
    bins, basis = _cepstrum_basis(envelope.shape[1], int(n_coeffs), alpha)
    log_amplitude = 0.5 * np.log(np.maximum(envelope, 1e-20))
    lower = np.floor(bins).astype(int)
    upper = np.minimum(lower + 1, envelope.shape[1] - 1)
    fraction = bins - lower
    on_warped = log_amplitude[:, lower] * (1.0 - fraction) + log_amplitude[:, upper] * fraction
    # (1/pi) int_0^pi ln|H(b)| cos(d b) db = c_d for ln|H(b)| = c_0 + 2 sum_d c_d cos(d b)
    return on_warped @ basis.T


@dataclass
class MelCepstrum:
    """A signal's frame-wise analysis: ``coefficients`` float64 ``[frames, n_coeffs + 1]`` (``c_0..c_D``),
    ``voiced`` bool ``[frames]``, ``f0`` float32 ``[frames]`` (Hz, 0 = unvoiced), ``hop`` in samples at ``sr``."""

    coefficients: np.ndarray
    voiced: np.ndarray
    f0: np.ndarray
    sr: int
    hop: int

    @property
    def n_frames(self) -> int:
        return int(self.coefficients.shape[0])


def _as_mono(wav: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(wav, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{what}: expected mono audio [samples], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: audio holds NaN or infinite samples")
    return x


def mel_cepstrum(wav: np.ndarray, sr: int, settings: TimbreSettings | None = None,
                 what: str = "<audio array>") -> MelCepstrum:
    """WORLD analysis of a mono signal (``[samples]``) into frame-wise mel-cepstra.

    ``len(wav) // hop`` frames (hop = ``settings.frame_s`` at ``sr``). ``what`` names the signal in errors.
    """
    import pyworld

    from ai_singer.features.f0_settings import F0Settings
    from ai_singer.features.pitch import extract_f0, frame_times

    settings = settings or TimbreSettings()
    x = _as_mono(wav, what)
    hop = settings.hop(sr)
    n_frames = x.shape[0] // hop
    if n_frames < 1:
        raise ValueError(f"{what}: {x.shape[0]} samples is shorter than one {settings.frame_s * 1000:.0f} ms frame")
    f0 = extract_f0(x, sr, hop, n_frames, F0Settings.from_conf(method=settings.f0_method, f0_min=settings.f0_min,
                                                                f0_max=settings.f0_max))
    envelope = pyworld.cheaptrick(x, f0.astype(np.float64), frame_times(n_frames, hop, sr), int(sr),
                                  f0_floor=float(min(settings.f0_min, 71.0)))
    coefficients = envelope_to_mel_cepstrum(envelope, sr, settings.n_coeffs)
    return MelCepstrum(coefficients=coefficients, voiced=f0 > 0, f0=f0, sr=int(sr), hop=hop)


def frame_mcd_db(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame MCD in dB between mel-cepstra ``[frames, n_coeffs + 1]`` (``c_0`` ignored) -> ``[frames]``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"mel-cepstra shapes differ: {a.shape} vs {b.shape}")
    return MCD_CONSTANT * np.sqrt(np.sum((a[:, 1:] - b[:, 1:]) ** 2, axis=1))


@dataclass
class MCDResult:
    """``mcd_db``: mean MCD over the compared frames (NaN when none); ``frames``: how many were compared;
    ``alignment``: ``frames`` or ``dtw``; ``voiced_only``: whether only frames voiced in both counted."""

    mcd_db: float
    frames: int
    alignment: str
    voiced_only: bool

    def to_dict(self) -> dict:
        return asdict(self)


def mcd_between(reference: MelCepstrum, other: MelCepstrum, align: str = "frames",
                voiced_only: bool = True) -> MCDResult:
    """MCD of two analysed signals.

    ``align="frames"`` compares frame ``i`` with frame ``i`` (the longer signal's extra frames are
    ignored); with ``voiced_only`` only frames voiced in both count. ``align="dtw"`` first keeps each
    signal's voiced frames (all frames without ``voiced_only``), then averages the per-frame MCD along
    the DTW path (librosa, Euclidean cost on ``c_1..c_D``)."""
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {ALIGNMENTS}, got {align!r}")
    if reference.coefficients.shape[1] != other.coefficients.shape[1]:
        raise ValueError("the two analyses have different numbers of coefficients")
    if align == "frames":
        n = min(reference.n_frames, other.n_frames)
        keep = np.ones(n, dtype=bool)
        if voiced_only:
            keep &= reference.voiced[:n] & other.voiced[:n]
        if not keep.any():
            return MCDResult(float("nan"), 0, align, voiced_only)
        per_frame = frame_mcd_db(reference.coefficients[:n][keep], other.coefficients[:n][keep])
        return MCDResult(float(per_frame.mean()), int(keep.sum()), align, voiced_only)

    from librosa.sequence import dtw

    ref = reference.coefficients[reference.voiced] if voiced_only else reference.coefficients
    oth = other.coefficients[other.voiced] if voiced_only else other.coefficients
    if ref.shape[0] == 0 or oth.shape[0] == 0:
        return MCDResult(float("nan"), 0, align, voiced_only)
    _, path = dtw(X=ref[:, 1:].T, Y=oth[:, 1:].T, metric="euclidean", backtrack=True)
    path = path[::-1]
    per_frame = frame_mcd_db(ref[path[:, 0]], oth[path[:, 1]])
    return MCDResult(float(per_frame.mean()), int(path.shape[0]), align, voiced_only)


def mel_cepstral_distortion(reference: np.ndarray, other: np.ndarray, sr: int,
                            settings: TimbreSettings | None = None, align: str = "frames",
                            voiced_only: bool = True) -> MCDResult:
    """MCD in dB between two mono signals (``[samples]`` each, same rate ``sr``); see :func:`mcd_between`."""
    settings = settings or TimbreSettings()
    return mcd_between(mel_cepstrum(reference, sr, settings, "reference"), mel_cepstrum(other, sr, settings, "other"),
                       align=align, voiced_only=voiced_only)


# ------------------------------------------------------------------------------------------- pitch

@dataclass
class F0Error:
    """F0 of a signal against an intended contour.

    Cents are ``1200 * log2(f0 / intended)`` on frames voiced in both (``frames_compared``):
    ``median_abs_cents``, ``mean_abs_cents``, ``p90_abs_cents``, ``mean_cents`` (signed: sharp > 0),
    ``within_50_cents`` (fraction of compared frames). ``voicing_agreement``: fraction of all frames where
    both agree on voiced/unvoiced; ``voiced_recall``: fraction of the intended voiced frames found voiced.
    ``rmse_cents``: root mean square of the signed cents; ``off_50_cents``: fraction of compared frames off
    by more than 50 cents (``1 - within_50_cents``); ``octave_errors``: fraction off by more than 600 cents,
    i.e. whose nearest octave is wrong (an octave-shifted copy scores 1.0).
    The cents fields are NaN when no frame is voiced in both.
    """

    median_abs_cents: float
    mean_abs_cents: float
    p90_abs_cents: float
    mean_cents: float
    within_50_cents: float
    voicing_agreement: float
    voiced_recall: float
    frames_compared: int
    frames: int
    rmse_cents: float = float("nan")
    off_50_cents: float = float("nan")
    octave_errors: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


#: An F0 frame off by more than this many cents is an octave error (its nearest octave is wrong).
OCTAVE_ERROR_CENTS = 600.0


def f0_cents_error(f0: np.ndarray, intended_f0: np.ndarray) -> F0Error:
    """Compare an F0 track with the intended one (both Hz ``[frames]`` on the same frame grid, 0 = unvoiced)."""
    f0 = np.nan_to_num(np.asarray(f0, dtype=np.float64))
    intended = np.nan_to_num(np.asarray(intended_f0, dtype=np.float64))
    if f0.ndim != 1 or f0.shape != intended.shape:
        raise ValueError(f"F0 tracks must be 1-D with equal lengths, got {f0.shape} and {intended.shape}")
    voiced, intended_voiced = f0 > 0, intended > 0
    both = voiced & intended_voiced
    n = int(f0.shape[0])
    agreement = float(np.mean(voiced == intended_voiced)) if n else float("nan")
    recall = float(np.mean(voiced[intended_voiced])) if intended_voiced.any() else float("nan")
    if not both.any():
        nan = float("nan")
        return F0Error(nan, nan, nan, nan, nan, agreement, recall, 0, n)
    cents = 1200.0 * np.log2(f0[both] / intended[both])
    error = np.abs(cents)
    return F0Error(median_abs_cents=float(np.median(error)), mean_abs_cents=float(error.mean()),
                   p90_abs_cents=float(np.percentile(error, 90)), mean_cents=float(cents.mean()),
                   within_50_cents=float(np.mean(error <= 50.0)), voicing_agreement=agreement,
                   voiced_recall=recall, frames_compared=int(both.sum()), frames=n,
                   rmse_cents=float(np.sqrt(np.mean(cents ** 2))), off_50_cents=float(np.mean(error > 50.0)),
                   octave_errors=float(np.mean(error > OCTAVE_ERROR_CENTS)))


def f0_error_of_audio(wav: np.ndarray, sr: int, intended_f0: np.ndarray, hop: int, method: str | None = None,
                      f0_min: float | None = None, f0_max: float | None = None) -> F0Error:
    """F0 error of a mono signal against ``intended_f0`` (Hz ``[frames]``, frame ``i`` centred at
    ``(i + 0.5) * hop / sr``, the convention of ``extract_f0`` and of the synthetic corpus's ``.f0.npy``).
    ``method``, ``f0_min``, ``f0_max`` not given: those of ``conf/f0``."""
    from ai_singer.features.f0_settings import F0Settings
    from ai_singer.features.pitch import extract_f0

    x = _as_mono(wav, "converted audio")
    intended = np.asarray(intended_f0)
    f0 = extract_f0(x, sr, hop, int(intended.shape[0]), F0Settings.from_conf(method=method, f0_min=f0_min, f0_max=f0_max))
    return f0_cents_error(f0, intended)


# --------------------------------------------------------------------------------------- speakers

def timbre_features(analysis: MelCepstrum) -> np.ndarray:
    """Clip-level timbre features: mean and standard deviation over the voiced frames of ``c_1..c_D``
    -> float64 ``[2 * D]``. Raises ValueError when no frame is voiced."""
    if not analysis.voiced.any():
        raise ValueError("no voiced frame: cannot describe the singer's timbre")
    voiced = analysis.coefficients[analysis.voiced, 1:]
    return np.concatenate([voiced.mean(axis=0), voiced.std(axis=0)])


def clip_timbre_features(wav: np.ndarray, sr: int, settings: TimbreSettings | None = None,
                         what: str = "<audio array>") -> np.ndarray:
    """:func:`timbre_features` of a mono signal ``[samples]``; errors name ``what``."""
    analysis = mel_cepstrum(wav, sr, settings, what)
    try:
        return timbre_features(analysis)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None


@dataclass
class SpeakerGuess:
    """The classifier's answer for one clip: the most likely singer and P(singer) for every singer."""

    predicted: str
    probabilities: dict[str, float]

    def probability(self, singer: str) -> float:
        if singer not in self.probabilities:
            raise KeyError(f"singer {singer!r} is not one the classifier knows: {sorted(self.probabilities)}")
        return self.probabilities[singer]


class SpeakerClassifier:
    """Which singer does a clip sound like? Standardised features -> multinomial logistic regression.

    Build with :meth:`fit` on clip features (``[clips, features]``, e.g. :func:`clip_timbre_features`)
    and their singer names; every singer needs at least one clip and there must be two singers or more.
    """

    def __init__(self, pipeline, singers: list[str]):
        self._pipeline = pipeline
        self.singers = singers

    @classmethod
    def fit(cls, features: np.ndarray | Sequence[np.ndarray], singers: Iterable[str], c: float = 1.0,
            seed: int = 0) -> "SpeakerClassifier":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.asarray(features, dtype=np.float64)
        labels = [str(s) for s in singers]
        if x.ndim != 2 or x.shape[0] != len(labels):
            raise ValueError(f"features must be [clips, features] with one singer name per clip; got shape "
                             f"{x.shape} and {len(labels)} names")
        if len(set(labels)) < 2:
            raise ValueError(f"the speaker classifier needs clips of at least two singers, got {sorted(set(labels))}")
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
        pipeline.fit(x, labels)
        return cls(pipeline, [str(s) for s in pipeline.classes_])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """P(singer) ``[clips, len(self.singers)]`` for features ``[clips, features]`` (or one clip ``[features]``)."""
        x = np.asarray(features, dtype=np.float64)
        return self._pipeline.predict_proba(x[None, :] if x.ndim == 1 else x)

    def identify(self, features: np.ndarray) -> SpeakerGuess:
        """The guess for one clip's features ``[features]``."""
        probabilities = self.predict_proba(np.asarray(features).reshape(-1))[0]
        return SpeakerGuess(predicted=self.singers[int(np.argmax(probabilities))],
                            probabilities={s: float(p) for s, p in zip(self.singers, probabilities)})

    def accuracy(self, features: np.ndarray, singers: Iterable[str]) -> float:
        """Fraction of clips whose predicted singer is the given one."""
        probabilities = self.predict_proba(features)
        predicted = [self.singers[i] for i in np.argmax(probabilities, axis=1)]
        labels = list(singers)
        return float(np.mean([p == s for p, s in zip(predicted, labels)])) if labels else float("nan")
