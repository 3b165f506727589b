"""Where does a base lose the words? CER of its own speakers' eval phrases along each path of the model.

    .venv/bin/python tools/path_check.py --corpus data/real --base pretrain/real-ddsp-words [--voices V ...] \\
        [--kinds sung speech]

For each sung eval phrase (``--kinds sung speech``: and speech phrase) with a transcript of the corpus voices
that are speakers of the base (train voices: the check needs the base's own speaker vector, so it never touches
the held-out voices), with that speaker vector and F0 tracked from the phrase as a conversion tracks it (conf/f0):
  recorded    the phrase as it is;
  autoencoder the posterior encoder's mean of its linear spectrogram, decoded (what training reconstructs: the
              decoder and the latent's ceiling);
  conversion  its content features through the prior encoder, the prior mean through the inverted flow,
              decoded (a conversion into its own voice at noise_scale 0).
Each is transcribed with Whisper (tools/real_metrics.py) and scored against the transcript (CER pooled over
phrases, as tools/eval_real.py). If the autoencoder loses as many words as the conversion, the decoder or the
latent is the bottleneck, not the content features, the prior or the flow.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `ai_singer` importable

from ai_singer.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from tools import real_metrics  # noqa: E402
from tools.eval_conversion import EvalError, content_group, read_yaml  # noqa: E402
from tools.eval_real import Phrase, cer_counts, load_corpus, pooled_cer, read_mono  # noqa: E402

PATHS = ("recorded", "autoencoder", "conversion")


def phrases_to_check(corpus, speakers: list[str], voices: list[str] | None,
                     kinds: tuple[str, ...] = ("sung",)) -> list[Phrase]:
    """The phrases of ``kinds`` (sung, speech) with a transcript of ``voices`` (default: every corpus voice that
    is a speaker of the base); a voice that is not a base speaker is an error naming the base's speakers."""
    chosen = voices if voices else [v for v in corpus.voices if v in speakers]
    for voice in chosen:
        if voice not in speakers:
            raise EvalError(f"{voice!r} is not a speaker of the base ({', '.join(speakers)}): this check decodes "
                            "with the base's own speaker vector, so it runs on the voices the base was trained on")
    phrases = [p for v in chosen for p in corpus.phrases.get(v, []) if p.kind in kinds and p.text]
    if not phrases:
        raise EvalError(f"{corpus.root}: no {'/'.join(kinds)} eval phrase with a transcript among "
                        f"{', '.join(chosen) or 'the base speakers'}")
    return phrases


def decode_paths(model, content_encoder, phrase: Phrase, g, f0_settings, correction
                 ) -> tuple[dict[str, np.ndarray], int]:
    """The phrase's audio along each path of :data:`PATHS` (float32, the model's rate) and that rate. F0 from
    ``f0_settings`` (conf/f0) and ``correction`` (conf/infer.yaml's pitch correction), as a conversion."""
    import torch

    from ai_singer.audio import resample
    from ai_singer.convert import CONTENT_SAMPLE_RATE, prepare_f0
    from ai_singer.features.content import align_to_frames, encode_audio
    from ai_singer.features.pitch import extract_f0
    from ai_singer.features.spectrogram import linear_spectrogram
    from ai_singer.features.volume import frame_rms

    cfg = model.config
    audio, sr = read_mono(phrase.path)
    if sr != cfg.sample_rate:
        audio = resample(audio, sr, cfg.sample_rate)
    n = len(audio) // cfg.hop_length
    audio = audio[: n * cfg.hop_length]
    # F0 and voicing as a conversion gets them (the conversion's tracker on the audio): the imposed contour
    # of a phrase made to sing is voiced through its consonants, which would excite them with harmonics
    f0_filled, voiced_bool = prepare_f0(extract_f0(audio, cfg.sample_rate, cfg.hop_length, n, f0_settings), 0.0,
                                        correction)
    voiced = voiced_bool.astype(np.float32)
    content = encode_audio(content_encoder, resample(audio, cfg.sample_rate, CONTENT_SAMPLE_RATE))
    content = align_to_frames(content, n, cfg.hop_length, cfg.sample_rate)
    volume = frame_rms(audio, cfg.hop_length)[:n].astype(np.float32)
    c = torch.from_numpy(np.ascontiguousarray(content.T, dtype=np.float32))[None]
    f0_t, voiced_t, volume_t = (torch.from_numpy(x)[None] for x in (f0_filled, voiced, volume))
    mask = torch.ones(1, 1, n)
    with torch.inference_mode():
        spec = linear_spectrogram(torch.from_numpy(audio)[None], n_fft=cfg.n_fft, hop=cfg.hop_length,
                                  win=cfg.win_length)[..., :n]
        model_f0 = model.model_f0(f0_t, voiced_t)
        _, posterior_mean, _ = model.posterior_encoder(spec, mask, g)
        autoencoder = model.decoder(posterior_mean, model_f0, voiced_t, g, torch.Generator().manual_seed(0))
        conversion = model.infer(c, f0_t, voiced_t, volume_t, g, noise_scale=0.0,
                                 generator=torch.Generator().manual_seed(0))
    return {"recorded": audio, "autoencoder": autoencoder[0, 0].numpy(),
            "conversion": conversion[0, 0].numpy()}, cfg.sample_rate


def summarise(rows: list[dict]) -> dict:
    """Pooled CER per path (edits over characters, as tools/eval_real.py) and the phrase count, over all rows
    and (``by_kind``) over each kind of phrase among them (sung, speech)."""
    def pooled(chosen: list[dict]) -> dict:
        return {path: pooled_cer([r[path] for r in chosen]) for path in PATHS} | {"phrases": len(chosen)}

    kinds = sorted({r["kind"] for r in rows})
    return pooled(rows) | {"by_kind": {kind: pooled([r for r in rows if r["kind"] == kind]) for kind in kinds}}


def markdown(document: dict) -> str:
    lines = [f"Base `{document['base']}`, corpus `{document['corpus']}`, Whisper {document['whisper']}, "
             f"{document['created']}.", "", "| voice | phrase | CER recorded | CER autoencoder | CER conversion |",
             "|---|---|---:|---:|---:|"]
    for r in document["phrases"]:
        lines.append(f"| {r['voice']} | {r['phrase']} | " + " | ".join(f"{r[p]['cer']:.2f}" for p in PATHS) + " |")
    s = document["summary"]
    by_kind = s.get("by_kind", {})
    if len(by_kind) > 1:
        for kind, k in by_kind.items():
            lines.append(f"| pooled, {kind} | {k['phrases']} phrases | " + " | ".join(f"{k[p]:.2f}" for p in PATHS)
                         + " |")
    lines.append(f"| **pooled** | {s['phrases']} phrases | " + " | ".join(f"**{s[p]:.2f}**" for p in PATHS) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    import torch

    from ai_singer.config import load_settings
    from ai_singer.infer import Converter, InferError

    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    if not (args.base / "config.yaml").is_file():
        raise EvalError(f"{args.base}: no base artifact (config.yaml + generator.safetensors)")
    base_config = read_yaml(args.base / "config.yaml")
    speakers = [str(s) for s in base_config.get("speakers") or []]
    phrases = phrases_to_check(corpus, speakers, args.voices, tuple(args.kinds))
    # the base's own path, plain (refining at conversion would hide what the base loses)
    settings = load_settings("infer", ["refine.steps=0", *([f"f0.method={args.f0_method}"] if args.f0_method else [])])
    try:
        converter = Converter(args.base, content_group(args, base_config), settings, args.base, device="cpu")
    except InferError as error:
        raise EvalError(str(error)) from None
    model = converter.model.eval()
    transcriber = real_metrics.Transcriber(args.whisper, cache_dir=args.cache_dir, threads=args.threads,
                                           beam_size=args.beam_size)
    rows = []
    for phrase in phrases:
        g = model.embed_speaker(torch.tensor([speakers.index(phrase.voice)]))
        audios, sr = decode_paths(model, converter.content_encoder, phrase, g, settings.f0, settings.pitch_correction)
        row = {"voice": phrase.voice, "phrase": phrase.id, "kind": phrase.kind, "text": phrase.text}
        for path, audio in audios.items():
            heard = transcriber.transcribe(audio, sr, phrase.language)
            row[path] = {"heard": heard, **cer_counts(heard, phrase.text)}
        rows.append(row)
        if not args.quiet:
            print(f"{phrase.voice}/{phrase.id}: " + ", ".join(f"{p} {row[p]['cer']:.2f}" for p in PATHS), flush=True)
    return {"base": str(args.base), "corpus": str(args.corpus), "whisper": args.whisper,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "phrases": rows, "summary": summarise(rows)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/real"), help="real-voice corpus (voices.json)")
    parser.add_argument("--base", type=Path, required=True, help="base artifact folder (pretrain/<name>)")
    parser.add_argument("--voices", nargs="*", default=None, help="base speakers to check (default: all in the corpus)")
    parser.add_argument("--kinds", nargs="+", choices=("sung", "speech"), default=["sung"],
                        help="eval phrases checked (default: sung; add speech for more phrases)")
    parser.add_argument("--whisper", choices=real_metrics.WHISPER_MODELS, default="base")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where Whisper base is joined")
    parser.add_argument("--content-path", default=None, help="content encoder folder (default: the base's record)")
    parser.add_argument("--content-layer", type=int, default=None)
    parser.add_argument("--content-final-proj", type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
    parser.add_argument("--f0-method", default=None, help="F0 extractor (default: conf/f0's, as a conversion)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)  # content_group reads it; CPU only
    parser.add_argument("--out", type=Path, default=None, help="JSON report (+ .md beside)")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        document = run(args)
    except EvalError as error:
        print(f"path_check: error: {error}", file=sys.stderr)
        return 2
    text = markdown(document)
    print(text)
    if args.out:
        atomic_write_json(args.out, document)
        atomic_write_text(args.out.with_suffix(".md"), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
