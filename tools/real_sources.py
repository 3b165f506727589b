"""Where the real-voice corpus's recordings come from: the Debian packages' folders, their voices, transcripts
and decoders (``tools/real_corpus.py`` plans and renders the corpus from what is collected here).

Train and held-out voices come from installed packages (asterisk-core-sounds-*-g722, festvox-ru, codec2-examples,
alsa-utils). Validation voices come from three more asterisk prompt packages unpacked into a folder of their own
(``apt-get download`` + ``dpkg -x``; installing them would put two speakers in one language folder), never
trained on: candidates are chosen on them, and the held-out voices are only reported.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ai_singer.atomic import atomic_path

DEBIAN = {
    "asterisk": "/usr/share/asterisk/sounds",
    "asterisk_docs": "/usr/share/doc",
    "festvox_ru": "/usr/share/festival/voices/russian/msu_ru_nsh_clunits",
    "codec2": "/usr/share/codec2/raw",
    "alsa": "/usr/share/sounds/alsa",
}

#: Asterisk language folder -> (voice, sex). en and es are the same woman (Allison).
ASTERISK_VOICES = {
    "en": ("en_allison_f", "f"),
    "es": ("en_allison_f", "f"),
    "fr": ("fr_june_f", "f"),
    "it": ("it_carlo_m", "m"),
    "ru": ("ru_ivr_f", "f"),
}
#: Asterisk prompts that are not speech (tones, silence), by name.
ASTERISK_NOT_SPEECH = re.compile(r"^(silence/.*|beep|beeperr|ascending-2tone|descending-2tone)$")
#: codec2-examples clips whose file name names the speaker (English speech, 8 kHz, 16-bit raw).
CODEC2_SPEAKERS = ("hts1", "hts2", "morig", "forig", "kristoff", "ve9qrp", "vk5qi", "g3plx", "mmt1")
CODEC2_SKIP = {
    "hts": "several speakers in one file (hts1 and hts2 are its first two parts)",
    "hts1a": "the first 3 s of hts1",
    "hts2a": "the first 3 s of hts2",
    "ve9qrp_10s": "the first 10 s of ve9qrp",
    "f2400": "forig passed through the 2400 bit/s codec",
    "m2400": "morig passed through the 2400 bit/s codec",
}
CODEC2_SR = 8000
#: Validation voices: asterisk prompt packages (their folder under usr/share/asterisk/sounds of the unpacked tree)
#: -> (voice, sex, language, package). None of them ships a transcript: their phrases get text null, and
#: tools/eval_real.py measures the words against Whisper's reading of the source phrase.
VALIDATION_VOICES = {
    "it_IT_f_Menardi": ("it_menardi_f", "f", "it", "asterisk-prompt-it-menardi-wav"),
    "es": ("es_co_f", "f", "es", "asterisk-prompt-es-co"),
    "fr": ("fr_armelle_f", "f", "fr", "asterisk-prompt-fr-armelle"),
}
VALIDATION_HOW = ("mkdir -p DIR && cd DIR && apt-get download asterisk-prompt-it-menardi-wav asterisk-prompt-es-co "
                  "asterisk-prompt-fr-armelle && for d in *.deb; do dpkg -x $d .; done")
#: ffmpeg input options and output rate of the formats only ffmpeg reads here (raw G.722, raw GSM 6.10).
FFMPEG_FORMATS = {"g722": (["-f", "g722"], 16000), "gsm": (["-f", "gsm", "-ar", "8000"], 8000)}


class Folders(Protocol):
    """Where each source is looked for (``tools/real_corpus.Settings``)."""
    asterisk_dir: Path
    asterisk_doc_dir: Path
    festvox_ru_dir: Path
    codec2_dir: Path
    alsa_dir: Path
    validation_dir: Path | None


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One recorded file of one voice."""
    voice: str
    clip: str          # file-name stem, unique within the voice
    path: str
    decoder: str       # "g722" / "gsm" (ffmpeg), "soundfile", "raw8k"
    language: str
    text: str | None
    est_seconds: float  # from the file size / header, before decoding


@dataclass
class VoiceSpec:
    name: str
    origin: str
    languages: list[str]
    sex: str | None       # None: decided from the measured F0
    package: str
    validation: bool = False  # a validation voice (never trained on, never held out)


@dataclass
class Collection:
    voices: dict[str, VoiceSpec] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # missing folders, missing transcripts, ...
    skipped: list[dict] = field(default_factory=list)   # {"path", "reason"}


def _missing(collection: Collection, what: str, folder: Path, package: str) -> None:
    collection.notes.append(f"{what}: {folder} not found; it comes with the Debian package {package} "
                            f"(apt-get install {package}); going on without it")


def walk_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (symlinks followed, as Debian's alternatives use them), sorted."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found.extend(Path(root) / name for name in files)
    return sorted(found)


def _clip_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "clip"


def read_asterisk_transcripts(doc_dir: Path, language: str) -> dict[str, str] | None:
    """``{"digits/0": "zero", ...}`` from core-sounds-<lang>.txt(.gz) in the asterisk-core-sounds docs."""
    for package in (f"asterisk-core-sounds-{language}", f"asterisk-core-sounds-{language}-g722"):
        for name in (f"core-sounds-{language}.txt.gz", f"core-sounds-{language}.txt"):
            path = doc_dir / package / name
            if path.is_file():
                raw = gzip.open(path, "rb").read() if name.endswith(".gz") else path.read_bytes()
                texts: dict[str, str] = {}
                for line in raw.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines():
                    key, sep, text = line.partition(":")
                    key, text = key.strip().lstrip("\ufeff"), text.strip()
                    if sep and key and not key.startswith(";") and text and key not in texts:
                        texts[key] = text
                return texts
    return None


def collect_asterisk(settings: Folders, collection: Collection, have_ffmpeg: bool) -> None:
    for language, (voice, sex) in ASTERISK_VOICES.items():
        package = f"asterisk-core-sounds-{language}-g722"
        folder = settings.asterisk_dir / language
        if not folder.is_dir():
            _missing(collection, f"asterisk {language}", folder, package)
            continue
        texts = read_asterisk_transcripts(settings.asterisk_doc_dir, language)
        if texts is None:
            collection.notes.append(f"asterisk {language}: no transcript core-sounds-{language}.txt(.gz) under "
                                    f"{settings.asterisk_doc_dir} (Debian package asterisk-core-sounds-{language}); "
                                    f"its phrases get text null")
            texts = {}
        spec = collection.voices.setdefault(voice, VoiceSpec(voice, "asterisk", [], sex, ""))
        spec.languages.append(language)
        spec.origin = "asterisk-" + "+".join(spec.languages)
        spec.package = ", ".join(filter(None, [spec.package, package]))
        undecodable = collect_prompts(folder, (".g722", ".wav"), voice, language, texts, have_ffmpeg, collection)
        if undecodable:
            collection.notes.append(f"asterisk {language}: ffmpeg not found (Debian package ffmpeg); its {undecodable} "
                                    f"G.722 files are skipped")


#: Prompt file suffix -> (decoder, its name in messages, bytes per second of a raw stream; None: read the header).
PROMPT_FORMATS = {".wav": ("soundfile", "WAV", None), ".g722": ("g722", "G.722", 8000.0),
                  ".gsm": ("gsm", "GSM", 1650.0)}  # GSM 6.10: 33 bytes per 20 ms


def collect_prompts(folder: Path, suffixes: tuple[str, ...], voice: str, language: str, texts: dict[str, str],
                    have_ffmpeg: bool, collection: Collection) -> int:
    """One voice's asterisk prompts under ``folder`` (files of ``suffixes``; a prompt shipped in several formats:
    the .wav) as sources with their ``texts`` by prompt key; tones and silence skipped by name, formats only
    ffmpeg reads skipped without it. Returns how many were skipped for want of ffmpeg."""
    by_key: dict[str, Path] = {}
    for path in (p for p in walk_files(folder) if p.suffix in suffixes):
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key not in by_key or path.suffix == ".wav":
            by_key[key] = path
    undecodable = 0
    for key, path in sorted(by_key.items()):
        if ASTERISK_NOT_SPEECH.search(key):
            collection.skipped.append({"path": str(path), "reason": "not speech (tone or silence by name)"})
            continue
        decoder, name, bytes_per_second = PROMPT_FORMATS[path.suffix]
        if decoder in FFMPEG_FORMATS and not have_ffmpeg:
            collection.skipped.append({"path": str(path),
                                       "reason": f"ffmpeg not found (Debian package ffmpeg) to decode {name}"})
            undecodable += 1
            continue
        est = path.stat().st_size / bytes_per_second if bytes_per_second else _wav_seconds(path)
        collection.sources.append(Source(voice, _clip_name(f"{language}-{key}"), str(path), decoder, language,
                                         texts.get(key), est))
    return undecodable


def _wav_seconds(path: Path) -> float:
    import soundfile as sf

    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:  # unreadable: decoding will report it properly
        return 0.0


def read_festvox_transcripts(path: Path) -> dict[str, str]:
    """``( ru_0001 "text" )`` entries of a festvox txt.done.data; stress marks ``+`` removed."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    return {key: " ".join(value.replace("+", "").split())
            for key, value in re.findall(r'\(\s*(\S+)\s+"(.*?)"\s*\)', text, flags=re.S)}


def collect_festvox_ru(settings: Folders, collection: Collection) -> None:
    folder = settings.festvox_ru_dir / "wav"
    if not folder.is_dir():
        _missing(collection, "festvox-ru (msu_ru_nsh)", folder, "festvox-ru")
        return
    texts = read_festvox_transcripts(settings.festvox_ru_dir / "etc" / "txt.done.data")
    collection.voices["ru_nsh_m"] = VoiceSpec("ru_nsh_m", "festvox-ru-msu-nsh", ["ru"], "m", "festvox-ru")
    for path in sorted(folder.glob("*.wav")):
        collection.sources.append(Source("ru_nsh_m", _clip_name(path.stem), str(path), "soundfile", "ru",
                                         texts.get(path.stem), _wav_seconds(path)))


def collect_codec2(settings: Folders, collection: Collection) -> None:
    folder = settings.codec2_dir
    if not folder.is_dir():
        _missing(collection, "codec2", folder, "codec2-examples")
        return
    for path in sorted(folder.glob("*.raw")):
        name = path.stem
        if name in CODEC2_SPEAKERS:
            voice = f"codec2_{_clip_name(name).replace('-', '_').lower()}"
            collection.voices.setdefault(voice, VoiceSpec(voice, "codec2", ["en"], None, "codec2-examples"))
            collection.sources.append(Source(voice, _clip_name(name), str(path), "raw8k", "en", None,
                                             path.stat().st_size / (2.0 * CODEC2_SR)))
        else:
            reason = CODEC2_SKIP.get(name, "not a named speaker's speech (test signal, modem, or speaker unknown)")
            collection.skipped.append({"path": str(path), "reason": reason})


def collect_alsa(settings: Folders, collection: Collection) -> None:
    folder = settings.alsa_dir
    if not folder.is_dir():
        _missing(collection, "alsa", folder, "alsa-utils")
        return
    files = [p for p in sorted(folder.glob("*.wav")) if p.stem.lower() != "noise"]
    if not files:
        return
    collection.voices["alsa"] = VoiceSpec("alsa", "alsa-utils", ["en"], None, "alsa-utils")
    for path in files:
        collection.sources.append(Source("alsa", _clip_name(path.stem), str(path), "soundfile", "en",
                                         path.stem.replace("_", " "), _wav_seconds(path)))


def collect(settings: Folders) -> Collection:
    collection = Collection()
    have_ffmpeg = shutil.which("ffmpeg") is not None
    collect_asterisk(settings, collection, have_ffmpeg)
    collect_festvox_ru(settings, collection)
    collect_codec2(settings, collection)
    collect_alsa(settings, collection)
    if settings.validation_dir is not None:
        collect_validation(settings.validation_dir, collection, have_ffmpeg, settings.asterisk_dir)
    return collection


def collect_validation(folder: Path, collection: Collection, have_ffmpeg: bool, asterisk_dir: Path) -> None:
    """The validation voices under ``folder``: the root of the unpacked packages (or their sounds folder).
    Never the installed asterisk folder, where es-co and fr-armelle would share es/ and fr/ with core-sounds'
    voices."""
    sounds = folder / "usr" / "share" / "asterisk" / "sounds"
    sounds = sounds if sounds.is_dir() else folder
    if not folder.is_dir():
        collection.notes.append(f"validation voices: {folder} not found; unpack the packages there: {VALIDATION_HOW}")
        return
    if asterisk_dir.is_dir() and sounds.resolve() == asterisk_dir.resolve():
        collection.notes.append(f"validation voices: {sounds} is the installed asterisk folder, where their prompts "
                                f"would mix with core-sounds' voices; unpack the packages into a folder of their "
                                f"own: {VALIDATION_HOW}; going on without them")
        return
    found = 0
    for sub, (voice, sex, language, package) in VALIDATION_VOICES.items():
        voice_dir = sounds / sub
        if not voice_dir.is_dir() or not any(p.suffix in (".wav", ".gsm") for p in walk_files(voice_dir)):
            collection.notes.append(f"validation voice {voice}: no .wav/.gsm prompts under {voice_dir} (Debian "
                                    f"package {package}, unpacked: {VALIDATION_HOW}); going on without it")
            continue
        found += 1
        collection.voices[voice] = VoiceSpec(voice, package, [language], sex, package, validation=True)
        collect_prompts(voice_dir, (".wav", ".gsm"), voice, language, {}, have_ffmpeg, collection)
    if not found:
        collection.notes.append(f"validation voices: none found under {sounds}")


# --------------------------------------------------------------------------------------------- audio


def decode(source: Source, cache: str | None = None) -> tuple[np.ndarray, int]:
    """Mono float64 audio at the file's own rate. Raises ValueError naming the reason.

    G.722 and GSM go through ffmpeg (one process per file: the slow part of reading them); with ``cache`` (a
    folder) the decoded audio is kept there as 16-bit WAV (exactly the decoder's samples) and read back
    the next time."""
    if source.decoder in FFMPEG_FORMATS:
        import soundfile as sf

        options, rate = FFMPEG_FORMATS[source.decoder]

        cached = Path(cache) / source.voice / f"{source.clip}.wav" if cache else None
        if cached is not None and cached.is_file():
            audio, sr = sf.read(str(cached), dtype="int16")
            return audio.astype(np.float64) / 32768.0, int(sr)
        command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *options, "-i", source.path,
                   "-ar", str(rate), "-ac", "1", "-f", "s16le", "-"]
        result = subprocess.run(command, capture_output=True)
        if result.returncode == 0 and not result.stdout and os.path.getsize(source.path) == 0:
            raise ValueError("empty file (0 bytes)")
        if result.returncode != 0 or not result.stdout:
            reason = result.stderr.decode(errors="replace").strip().splitlines()
            raise ValueError(f"ffmpeg could not decode it: {reason[-1] if reason else 'no audio'}")
        samples = np.frombuffer(result.stdout, dtype="<i2")
        if cached is not None:
            with atomic_path(cached) as tmp:
                sf.write(str(tmp), samples, rate, subtype="PCM_16")
        return samples.astype(np.float64) / 32768.0, rate
    if source.decoder == "raw8k":
        data = Path(source.path).read_bytes()
        if len(data) < 2:
            raise ValueError("empty file")
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0, CODEC2_SR
    import soundfile as sf

    try:
        audio, sr = sf.read(source.path, dtype="float64", always_2d=True)
    except Exception as error:  # soundfile raises its own LibsndfileError / RuntimeError
        raise ValueError(f"unreadable audio ({error})") from None
    if audio.shape[0] == 0:
        raise ValueError("no samples")
    return audio.mean(axis=1), int(sr)
