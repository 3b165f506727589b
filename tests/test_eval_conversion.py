"""tools/eval_conversion.py: a run on a tiny synthetic corpus with a tiny random base and adapter checks the
report (table, summary lines, JSON, BENCHMARKS section) and the intended transposition; a slow test checks
that the bundled base with the example adapter really converts (closer timbre, right pitch)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` is a folder of scripts, not installed

from ai_singer import checkpoint as ckpt  # noqa: E402
from ai_singer.adapters import PeftSettings, adapter_state_dict, prepare_for_finetune  # noqa: E402
from ai_singer.config import conf_group, load_settings  # noqa: E402
from ai_singer.model import SingerVAE, SingerVAEConfig  # noqa: E402
from tools import build_bundle, eval_conversion  # noqa: E402
from tools.synth.corpus import CorpusSettings, generate_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# A tiny SingerVAE: these values over conf/model/base.yaml (the model has no defaults of its own).
TINY = dict(sample_rate=44100, hop_length=512, content_dim=32, n_speakers=2, gin_channels=8, f0_bins=32,
            inter_channels=8, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=1, posterior_layers=1,
            n_flows=1, flow_layers=1, upsample_initial_channel=32, upsample_rates=[8, 8, 2, 2, 2],
            upsample_kernel_sizes=[16, 16, 4, 4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
            segment_frames=8)


def make_base(root: Path) -> Path:
    torch.manual_seed(0)
    model = SingerVAE(SingerVAEConfig.from_dict({**load_settings("train", ["model=base"]).model.to_dict(), **TINY}))
    config = {"model": model.config.to_dict(), "content_encoder": {"name": "hubert", "dim": TINY["content_dim"]},
              "sample_rate": TINY["sample_rate"], "hop_length": TINY["hop_length"], "speakers": ["a", "b"]}
    return ckpt.save_base(root / "pretrain" / "tiny", model.state_dict(), None, config)


def make_adapter(root: Path, base_dir: Path, folder: str, singer: str) -> Path:
    """A fresh LoRA adapter (B = 0 as after initialisation) with a random singer vector."""
    base = ckpt.load_base(base_dir)
    model = SingerVAE(SingerVAEConfig.from_dict(base.model_config))
    ckpt.load_state_strict(model, base.generator_state)
    settings = PeftSettings(**{**conf_group("peft", "lora"), "r": 2, "alpha": 4.0})
    prepare_for_finetune(model, settings)
    tensors = {name: tensor.detach().clone() for name, tensor in adapter_state_dict(model).items()}
    tensors["singer_embedding"] = torch.randn(TINY["gin_channels"], generator=torch.Generator().manual_seed(1))
    return ckpt.save_adapter(root / "singers" / folder, tensors, {
        "method": "lora", "singer": singer, "peft": settings.to_dict(), "base_sha256": base.sha256,
        "base_name": base_dir.name, "stats": {"f0_median_hz": 150.0}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    generate_corpus(CorpusSettings(out=root / "corpus", singers=3, phrases_per_singer=2, seconds=2.0,
                                   sample_rate=44100, seed=1, held_out=1, songs=0, parallel_phrases=1,
                                   progress=False))
    base_dir = make_base(root)
    make_adapter(root, base_dir, "tenor_adapter", "s02_tenor")  # found through adapter.yaml's singer
    return root, base_dir


def run_tool(setup, tiny_hubert_dir, tmp_path, *extra: str) -> tuple[int, dict | None]:
    root, base_dir = setup
    out = tmp_path / "eval.json"
    argv = ["--corpus", str(root / "corpus"), "--base", str(base_dir), "--singers-dir", str(root / "singers"),
            "--content-path", str(tiny_hubert_dir), "--content-layer", "2", "--f0-method", "dio",
            "--eval-f0-method", "dio", "--noise-scale", "0", "--device", "cpu", "--quiet",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(out), *extra]
    code = eval_conversion.main(argv)
    return code, (json.loads(out.read_text()) if out.is_file() else None)


def test_report_structure_json_table_and_bench_section(setup, tiny_hubert_dir, tmp_path, capsys):
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\n## Preprocess\n\nkeep me\n\n## Conversion quality\n\nold numbers\n")
    code, report = run_tool(setup, tiny_hubert_dir, tmp_path, "--pairs", "s00_soprano:s02_tenor",
                            "--bench", "--benchmarks", str(bench), "--save-audio", str(tmp_path / "audio"))
    assert code == 0
    printed = capsys.readouterr().out
    assert "| source → target | phrase | MCD conv (dB) | MCD src (dB) | nearest by MCD (target rank) |" in printed
    assert "| s00_soprano → s02_tenor | par000 |" in printed
    assert "s00_soprano → s02_tenor (adapter tenor_adapter, lora, steps unknown; transpose" in printed

    corpus = json.loads((setup[0] / "corpus" / "corpus.json").read_text())
    tonics = corpus["parallel"][0]["renditions"]
    [pair] = report["pairs"]
    assert pair["source"] == "s00_soprano" and pair["target"] == "s02_tenor"
    assert pair["adapter"]["name"] == "tenor_adapter" and pair["adapter"]["method"] == "lora"
    assert pair["adapter"]["steps"] is None
    assert pair["transpose_semitones"] == pytest.approx(tonics["s02_tenor"]["tonic_midi"]
                                                        - tonics["s00_soprano"]["tonic_midi"])
    [row] = pair["phrases"]
    assert row["phrase"] == "par000"
    assert set(row["mcd_db"]) == set(row["p_target"]) == set(row["predicted"]) == {"converted", "source"}
    assert row["mcd_db"]["source"] > 0 and row["mcd_frames"]["source"] > 10
    assert set(row["mcd_to_singers"]) == {"s00_soprano", "s01_bass", "s02_tenor"}
    assert row["mcd_to_singers"]["s02_tenor"] == pytest.approx(row["mcd_db"]["converted"])
    assert row["closest_singer"] == min(row["mcd_to_singers"], key=row["mcd_to_singers"].get)
    assert 1 <= row["target_rank"] <= 3
    assert 0.0 <= row["p_target"]["source"] <= 1.0
    assert row["predicted"]["source"] in {"s00_soprano", "s01_bass", "s02_tenor"}
    assert {"median_abs_cents", "p90_abs_cents", "voicing_agreement", "frames_compared"} <= set(row["f0"])
    assert row["f0_floor"]["median_abs_cents"] < 20  # the extractor alone on the source: a few cents
    assert row["f0_target_rendition"]["frames_compared"] > 10  # the target's own F0 vs the intended contour
    summary = pair["summary"]
    assert summary["phrases"] == 1
    assert {"mcd_converted_db", "mcd_source_db", "mcd_improvement_db", "p_target_converted", "p_target_source",
            "f0_median_abs_cents", "voicing_agreement", "target_closest_fraction", "mean_target_rank"} <= set(summary)
    assert report["classifier"]["clips"] == 6 and report["classifier"]["singers"] == [
        "s00_soprano", "s01_bass", "s02_tenor"]
    assert report["base"]["sha256"] == ckpt.sha256_file(setup[1] / "generator.safetensors")

    converted = tmp_path / "audio" / "s00_soprano-to-s02_tenor" / "par000.wav"
    import soundfile as sf

    audio, sr = sf.read(str(converted))
    source, _ = sf.read(str(setup[0] / "corpus" / "parallel" / "par000" / "s00_soprano.wav"))
    assert sr == 44100 and audio.shape == source.shape  # the converter keeps length and rate

    text = bench.read_text()
    assert "keep me" in text and "old numbers" not in text
    assert text.count("## Conversion quality") == 1 and "| s00_soprano → s02_tenor | tenor_adapter (lora, -) | 1 |" in text


def test_adapter_steps_from_the_run_folder(setup, tiny_hubert_dir, tmp_path):
    run = tmp_path / "runs" / "tenor_adapter" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"step": 40}, run / "step_00000040.pt")
    code, report = run_tool(setup, tiny_hubert_dir, tmp_path, "--pairs", "s00_soprano:s02_tenor=tenor_adapter")
    assert code == 0 and report["pairs"][0]["adapter"]["steps"] == 40


@pytest.mark.parametrize("pair, message", [
    ("s00_soprano-s02_tenor", "expected SOURCE:TARGET"),
    ("s00_soprano:nobody", "'nobody' is not a singer of"),
    ("s02_tenor:s01_bass", "no adapter for singer 's01_bass'"),
    ("s00_soprano:s02_tenor=missing", "no adapter.yaml there"),
])
def test_bad_pairs_are_clear_errors(setup, tiny_hubert_dir, tmp_path, capsys, pair, message):
    code, report = run_tool(setup, tiny_hubert_dir, tmp_path, "--pairs", pair)
    assert code == 2 and report is None
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- slow

BUNDLED_BASE = REPO / "pretrain" / str(build_bundle.BuildSettings().base)
EXAMPLE_ADAPTER = REPO / "singers" / "example"
CORPUS = REPO / "data" / "synth"


@pytest.mark.slow
def test_bundled_example_adapter_really_converts(tmp_path, capsys):
    """With the bundled base and the example adapter, when the example is a synthetic singer (the synthetic
    recipe): converted audio is closer to the target singer than the source (MCD), the classifier hears the
    target more (P(target)), and F0 stays within 50 cents."""
    if build_bundle.BuildSettings().recipe != "synth":
        pytest.skip("the bundled example singer is a held-out real voice (tools/build_bundle.py's real recipe): its "
                    "figures are tools/eval_real.py's (BENCHMARKS.md 'Real voices'), not the synthetic corpus's")
    missing = [str(p) for p in (BUNDLED_BASE / "config.yaml", EXAMPLE_ADAPTER / "adapter.yaml") if not p.is_file()]
    if missing:
        pytest.skip(f"needs the bundled base and the example adapter; missing: {missing} (tools/build_bundle.py)")
    corpus_dir = CORPUS
    if not (corpus_dir / "corpus.json").is_file():  # a clean checkout: make the bundle's corpus (seed 0, ~40 s)
        corpus_dir = tmp_path / "synth"
        generate_corpus(CorpusSettings(out=corpus_dir, seed=0, progress=False))
    target = str(eval_conversion.read_yaml(EXAMPLE_ADAPTER / "adapter.yaml").get("singer"))
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    voices = {s["name"]: s for s in corpus["singers"]}
    if target not in voices:  # tools/build_bundle.py fine-tunes the corpus's last held-out singer as 'example'
        target = [s["name"] for s in corpus["singers"] if s.get("split") == "held_out"][-1]
    # Source: the training singer of another voice type closest in key to the target (a fair, fixed choice).
    candidates = [s for s in corpus["singers"] if s["split"] == "train" and s["voice_type"] != voices[target]["voice_type"]]
    source = min(candidates, key=lambda s: abs(s["tonic_midi"] - voices[target]["tonic_midi"]))["name"]
    torch.set_num_threads(1)
    out = tmp_path / "eval.json"
    code = eval_conversion.main(["--corpus", str(corpus_dir), "--base", str(BUNDLED_BASE),
                                 "--singers-dir", str(EXAMPLE_ADAPTER.parent), "--pairs", f"{source}:{target}=example",
                                 "--device", "auto", "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    print(printed.out)  # the table and the summary line, shown with pytest -s
    summary = json.loads(out.read_text())["pairs"][0]["summary"]
    assert summary["mcd_converted_db"] < summary["mcd_source_db"], summary
    assert summary["p_target_converted"] > summary["p_target_source"], summary
    assert summary["f0_median_abs_cents"] < 50.0, summary
    assert np.isfinite(summary["voicing_agreement"])


def test_phone_accuracy_is_measured_when_the_encoder_has_a_phone_head(setup, tiny_hubert_dir, tmp_path):
    """With phone_head.safetensors beside the encoder, each phrase gets the share of sung frames read
    correctly for the converted audio, the source and the target rendition (a head that always answers
    'sil' reads no sung frame correctly: 0 for all three)."""
    import shutil

    from safetensors.torch import save_file

    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_hubert_dir, encoder)
    names = [p["symbol"] for p in json.loads((setup[0] / "corpus" / "phones.json").read_text())["phones"]]
    dim = json.loads((encoder / "config.json").read_text())["hidden_size"]
    bias = torch.full((len(names),), -10.0)
    bias[names.index("sil")] = 10.0
    save_file({"weight": torch.zeros(len(names), dim), "bias": bias}, str(encoder / "phone_head.safetensors"),
              metadata={"phones": json.dumps(names)})
    root, base_dir = setup
    out = tmp_path / "eval.json"
    code = eval_conversion.main(["--corpus", str(root / "corpus"), "--base", str(base_dir), "--singers-dir",
                                 str(root / "singers"), "--content-path", str(encoder), "--content-layer", "2",
                                 "--f0-method", "dio", "--eval-f0-method", "dio", "--noise-scale", "0", "--device",
                                 "cpu", "--quiet", "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                                 "--pairs", "s00_soprano:s02_tenor"])
    assert code == 0
    [pair] = json.loads(out.read_text())["pairs"]
    assert pair["phrases"][0]["phone_accuracy"] == {"converted": 0.0, "source": 0.0, "target": 0.0}
    assert pair["summary"]["phone_accuracy_converted"] == 0.0
