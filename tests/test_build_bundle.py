"""tools/build_bundle.py: a tiny bundle built end to end with the project's own commands (in this
interpreter, the same command lines the script runs as subprocesses), skipping, --force, the manifest and
the size limit. ``tiny_bundle()`` is shared with tests/test_demo.py (built once per session)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parent.parent


def _load_tool():
    name = "build_bundle"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "build_bundle.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


bb = _load_tool()
_BUILT: dict = {}
#: The steps of the synthetic recipe (what --tiny builds), in order.
SYNTH_STEPS = [step.name for step in bb.STEPS if "synth" in step.recipes]


def tiny_bundle(tmp_path_factory) -> tuple[Path, "bb.BuildResult", list[str]]:
    """Build the tiny bundle once per session: (root, result, printed lines)."""
    if "root" not in _BUILT:
        from hydra.core.global_hydra import GlobalHydra

        torch.set_num_threads(1)
        root = tmp_path_factory.mktemp("bundle")
        lines: list[str] = []
        GlobalHydra.instance().clear()
        result = bb.Builder(bb.tiny_settings(root, in_process=True), echo=lines.append).run()
        _BUILT.update(root=root, result=result, lines=lines)
    return _BUILT["root"], _BUILT["result"], _BUILT["lines"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


def test_every_step_ran_and_wrote_the_bundle(built):
    root, result, lines = built
    assert [r.step.name for r in result.records] == SYNTH_STEPS
    assert all(r.status == "ran" for r in result.records)
    for relative in ("pretrain/content/synth-hubert/model.safetensors", "pretrain/synth-tiny/generator.safetensors",
                     "pretrain/synth-tiny/discriminator.safetensors", "singers/example/adapter.safetensors",
                     "data/examples/song01/vocals.flac", "data/examples/song01/pad.flac",
                     "data/examples/song01/drums.flac", "pretrain/BUNDLE.md"):
        assert (root / relative).is_file(), relative
    # the base is stored in float16 and the adapter was trained on it, as the held-out singer 'example'
    import yaml

    base = yaml.safe_load((root / "pretrain/synth-tiny/config.yaml").read_text())
    adapter = yaml.safe_load((root / "singers/example/adapter.yaml").read_text())
    assert base["weights_dtype"] == "float16" and base["speakers"] == ["s00_soprano", "s01_bass"]
    assert adapter["base_sha256"] == base["generator_sha256"] and adapter["singer"] == "example"
    assert (root / "data/example_raw/example/p000.wav").read_bytes() == \
        (root / "data/synth/raw/s02_tenor/p000.wav").read_bytes()
    index = json.loads((root / "pretrain/bundle.json").read_text())
    assert index["base"] == "synth-tiny" and index["entries"] == [
        "pretrain/synth-tiny", "pretrain/content/synth-hubert", "singers/example", "data/examples/song01"]


def test_each_command_is_printed_exactly_as_run(built):
    root, result, lines = built
    commands = [line[2:] for line in lines if line.startswith("$ ")]
    assert len(commands) == 8  # corpus, encoder, preprocess, pretrain, copy + preprocess, finetune, song
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == sys.executable
    preprocess = shlex.split(next(c for c in commands if "paths.processed=data/processed_synth" in c))
    assert preprocess[1:3] == ["-m", "ai_singer.preprocess"] and "singers=[s00_soprano,s01_bass]" in preprocess
    pretrain = shlex.split(next(c for c in commands if "mode=pretrain" in c))
    assert {"export_dtype=float16", "model=tiny", "trainer.max_steps=2"} <= set(pretrain)
    # the manifest records the same command lines
    manifest = (root / "pretrain/BUNDLE.md").read_text()
    assert all(command in manifest for command in commands)


def test_manifest_lists_every_bundled_file_with_size_and_hash(built):
    root, result, _ = built
    manifest = (root / "pretrain/BUNDLE.md").read_text()
    assert result.files and result.total_bytes < 25e6
    for relative, size, digest in result.files:
        data = (root / relative).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == digest
        assert f"| `{relative}` | {size} | `{digest}` |" in manifest
    assert "torch " in manifest and "python " in manifest and "git commit" in manifest


def test_example_song_is_cut_near_the_requested_length(built):
    root, _, _ = built
    infos = {name: sf.info(str(root / "data/examples/song01" / name)) for name in ("vocals.flac", "pad.flac",
                                                                                   "drums.flac")}
    source = sf.info(str(root / "data/synth/songs/song00/vocals.wav"))
    for info in infos.values():
        assert info.samplerate == source.samplerate and info.subtype == "PCM_16"
        assert info.frames == infos["vocals.flac"].frames
    assert 3.0 * source.samplerate <= infos["vocals.flac"].frames <= 5.0 * source.samplerate
    vocal, _ = sf.read(str(root / "data/examples/song01/vocals.flac"))
    assert abs(vocal[-1]) < 1e-3  # faded out
    assert abs(vocal).max() > 0.05  # the cut keeps sung notes, not only the lead-in


def test_second_run_skips_everything_and_force_redoes_a_step(built):
    root, _, _ = built
    lines: list[str] = []
    result = bb.Builder(bb.tiny_settings(root, in_process=True, force=bb.parse_force(["song"])),
                        echo=lines.append).run()
    status = {r.step.name: r.status for r in result.records}
    assert status == {**{name: "skipped" for name in SYNTH_STEPS}, "song": "ran", "manifest": "ran"}
    assert [line for line in lines if line.startswith("$ ")] == [
        next(line for line in lines if "cut-song" in line)]
    assert any("corpus: skipped" in line and "--force corpus" in line for line in lines)


def test_force_names():
    assert bb.parse_force(["finetune+"]) == {"finetune", "song", "manifest"}
    assert bb.parse_force(["all"]) == set(bb.STEP_NAMES)
    assert bb.parse_force(["corpus,encoder"]) == {"corpus", "encoder"}
    with pytest.raises(bb.BuildError, match="unknown step.*pretrain"):
        bb.parse_force(["pretrian"])


def test_oversized_bundle_fails_loudly(built, capsys):
    root, _, _ = built
    code = bb.main(["--tiny", "--root", str(root), "--only", "manifest", "--max-mb", "0.1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "over the 0.1 MB limit" in err and "pretrain/synth-tiny/generator.safetensors" in err


def test_a_failing_step_names_its_command(tmp_path):
    root = tmp_path / "empty"
    with pytest.raises(bb.BuildError, match="corpus.json: missing"):
        bb.Builder(bb.tiny_settings(root, in_process=True), echo=lambda line: None).run(["preprocess-synth"])


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path, capsys):
    root = tmp_path / "fresh"
    assert bb.main(["--tiny", "--root", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "$ " + shlex.join([sys.executable, str(REPO / "tools/synth_corpus.py"), "--out", "data/synth"]) in out
    assert "train_content_encoder.py" in out and "# (not known:" in out  # the singers come from corpus.json
    assert not (root / "data").exists() and not (root / "pretrain").exists()


def test_a_step_as_a_real_subprocess_with_threads(built):
    root, _, _ = built
    lines: list[str] = []
    settings = bb.tiny_settings(root, threads=1, force=frozenset({"song"}))
    result = bb.Builder(settings, echo=lines.append).run(["song"])
    assert [r.status for r in result.records] == ["ran"]
    command = next(line for line in lines if line.startswith("$ "))
    assert command.startswith(f"$ OMP_NUM_THREADS=1 {shlex.quote(sys.executable)} ") and "cut-song" in command
    assert sf.info(str(root / "data/examples/song01/vocals.flac")).samplerate == 44100


# ------------------------------------------------------------------------------ the real recipe (no training)

def _write_wav(path: Path, seconds: float, sr: int = 16000) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(seconds * sr), dtype=np.float32), sr)


def _real_root(root: Path, base: str = "mybase", discriminator: bool = False) -> Path:
    """A root where the real recipe's base, corpus, encoder and song exist (stubs): only the example is left."""
    import yaml

    folder = root / "pretrain" / base
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"kind": "base", "generator_sha256": "abc", "content_encoder": {
        "name": "whisper", "dim": 512, "path": "wheel:base", "layer": None, "final_proj": None}}))
    for name in ("generator.safetensors", *(("discriminator.safetensors",) if discriminator else ())):
        (folder / name).write_bytes(b"")
    voices = {"va": {"role": "train"}, "vh": {"role": "heldout"}}
    (root / "data" / "real").mkdir(parents=True)
    (root / "data" / "real" / "voices.json").write_text(json.dumps({"voices": voices}))
    for relative in ("pretrain/content/synth-hubert/config.json", "pretrain/content/synth-hubert/model.safetensors",
                     "data/examples/song01/vocals.flac", "data/examples/song01/pad.flac",
                     "data/examples/song01/drums.flac"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"")
    return root


def _dry_run(root: Path, **changes) -> list[str]:
    lines: list[str] = []
    bb.Builder(bb.BuildSettings(root=root, dry_run=True, **changes), echo=lines.append).run()
    return lines


def test_the_example_follows_the_base_and_the_pretraining_chain_is_skipped(tmp_path):
    root = _real_root(tmp_path, "mybase")
    lines = _dry_run(root, base="mybase", example_source="vh")
    text = "\n".join(lines)
    for step in ("corpus", "preprocess-synth", "pretrain-synth", "real-pool", "preprocess-real", "pretrain-warm"):
        assert f"] {step}: skipped (nothing after it needs it)" in text, step
    assert "] pretrain: skipped (pretrain/mybase/config.yaml" in text
    copy = next(line for line in lines if "copy-singer" in line)
    assert "data/real/raw/vh/sung data/example_raw/example --seconds 600 --seed 0" in copy
    preprocess = next(line for line in lines if "ai_singer.preprocess" in line)
    assert "content=whisper content.path=wheel:base" in preprocess and "f0.method=parselmouth" in preprocess
    finetune = shlex.split(next(line for line in lines if "mode=finetune" in line)[2:])
    assert {"base=pretrain/mybase", "trainer.discriminator=off", "run_name=example-mybase-vh",
            "trainer.max_steps=500"} <= set(finetune)
    # a base that has a discriminator trains it
    other = _real_root(tmp_path / "other", "withd", discriminator=True)
    finetune = next(line for line in _dry_run(other, base="withd", example_source="vh") if "mode=finetune" in line)
    assert "trainer.discriminator=train" in finetune


def test_a_base_folder_elsewhere_is_copied_and_the_example_must_be_held_out(tmp_path):
    elsewhere = _real_root(tmp_path / "elsewhere", "newbase") / "pretrain" / "newbase"
    root = _real_root(tmp_path / "root", "oldbase")
    lines = _dry_run(root, base=str(elsewhere), example_source="vh")
    assert any(line.endswith(f"copy-base {elsewhere} pretrain/newbase") for line in lines)
    assert any("] pretrain-warm: skipped (nothing after it needs it)" in line for line in lines)
    (root / "pretrain" / "newbase").mkdir()
    bb.bundle_helpers.copy_base(elsewhere, root / "pretrain" / "newbase")
    assert (root / "pretrain/newbase/config.yaml").read_bytes() == (elsewhere / "config.yaml").read_bytes()
    lines = _dry_run(root, base="newbase", example_source="va")
    assert any("not known: " in line and "'va' is not a held-out voice" in line for line in lines)


def test_an_adapter_made_on_another_base_is_redone(tmp_path):
    import yaml

    root = _real_root(tmp_path, "mybase")
    adapter = root / "singers" / "example"
    adapter.mkdir(parents=True)
    (adapter / "adapter.safetensors").write_bytes(b"")
    (adapter / "adapter.yaml").write_text(yaml.safe_dump({"base_sha256": "abc"}))
    processed = root / "data" / "processed_example"
    processed.mkdir(parents=True)
    (processed / "manifest.jsonl").write_text("")
    (processed / "stats.json").write_text(json.dumps({"content_encoder": {"name": "whisper", "dim": 512,
                                                                          "path": "wheel:base"}}))
    record = bb.bundle_helpers.copy_record(root / "data/example_raw/example")
    record.parent.mkdir(parents=True)
    record.write_text(bb.bundle_helpers.copy_description("data/real/raw/vh/sung", 600.0, 0))
    builder = bb.Builder(bb.BuildSettings(root=root, base="mybase", example_source="vh", dry_run=True),
                         echo=lambda line: None)
    assert builder.plan() == {"manifest"}  # everything is current
    other_voice = bb.Builder(bb.BuildSettings(root=root, base="mybase", example_source="vg", dry_run=True),
                             echo=lambda line: None)
    voices = json.loads((root / "data/real/voices.json").read_text())
    voices["voices"]["vg"] = {"role": "heldout"}
    (root / "data/real/voices.json").write_text(json.dumps(voices))
    assert other_voice.plan() == {"preprocess-example", "finetune", "manifest"}  # another voice: both redone
    (adapter / "adapter.yaml").write_text(yaml.safe_dump({"base_sha256": "another"}))
    assert builder.plan() == {"finetune", "manifest"}
    (processed / "stats.json").write_text(json.dumps({"content_encoder": {"name": "hubert", "dim": 128,
                                                                          "path": "pretrain/content/synth-hubert"}}))
    assert builder.plan() == {"preprocess-example", "finetune", "manifest"}


def test_pool_voices_takes_train_voices_capped_and_never_a_held_out_one(tmp_path):
    corpus, synth, out = tmp_path / "real", tmp_path / "synth", tmp_path / "pool"
    (corpus).mkdir()
    (corpus / "voices.json").write_text(json.dumps({"voices": {"va": {"role": "train"}, "vh": {"role": "heldout"}}}))
    for index in range(6):
        _write_wav(corpus / "raw" / "va" / "speech" / f"s{index}.wav", 1.0)
    _write_wav(corpus / "raw" / "va" / "sung" / "g0.wav", 2.0)
    _write_wav(corpus / "raw" / "vh" / "sung" / "g0.wav", 2.0)
    synth.mkdir()
    (synth / "corpus.json").write_text(json.dumps({"singers": [{"name": "s0", "split": "train"},
                                                               {"name": "s9", "split": "held_out"}]}))
    _write_wav(synth / "raw" / "s0" / "p000.wav", 1.0)
    _write_wav(synth / "raw" / "s9" / "p000.wav", 1.0)
    files = bb.bundle_helpers.pool_voices(corpus, synth, out, speech_seconds=2.5, seed=0)
    names = sorted(p.relative_to(out).as_posix() for p in files)
    assert [n for n in names if "/speech/" in n] and len([n for n in names if "/speech/" in n]) == 3  # 3 x 1 s
    assert "va/sung/g0.wav" in names and "s0/p000.wav" in names
    assert not any(n.startswith(("vh/", "s9/")) for n in names)
    record = json.loads((out / "pool.json").read_text())
    assert sorted(record["voices"]) == ["s0", "va"]
    assert bb.bundle_helpers.pool_voices(corpus, synth, out, speech_seconds=2.5, seed=0) == files  # same again


# ------------------------------------------------------------------ the augmented base's chain (no training)

AUG_CHAIN = ["augment", "preprocess-aug", "mix", "pretrain-aug"]


def _records(root: Path, **changes) -> dict[str, "bb.StepRecord"]:
    builder = bb.Builder(bb.BuildSettings(root=root, dry_run=True, **changes), echo=lambda line: None)
    return {record.step.name: record for record in builder.run().records}


def test_an_augmented_base_plans_its_chain_in_order_and_real_ddsp_does_not(tmp_path):
    records = _records(tmp_path / "fresh", base="real-ddsp-aug")
    names = list(records)
    data = names[names.index("preprocess-real") + 1: names.index("pretrain-warm")]
    assert data == ["augment", "preprocess-aug", "mix"] and names[names.index("pretrain") + 1] == "pretrain-aug"
    assert all(records[name].status == "dry-run" for name in AUG_CHAIN)
    augment = shlex.split(records["augment"].commands[0])
    assert augment[1].endswith("tools/augment_voices.py") and augment[2:] == [
        "--corpus", "data/real", "--out", "data/real_aug/raw", "--voices", "en_allison_f", "fr_june_f", "ru_nsh_m",
        "--variants", "1.15:1.4", "0.87:0.72", "1.07:0.88", "0.94:1.12", "1.2:1.25", "--seconds", "200", "--seed", "0"]
    preprocess = shlex.split(records["preprocess-aug"].commands[0])
    real = shlex.split(records["preprocess-real"].commands[0])
    assert preprocess[5:] == real[5:]  # the same content encoder and F0 as the pool
    assert preprocess[3:5] == ["paths.raw=data/real_aug/raw", "paths.processed=data/processed_real_aug"]
    assert records["mix"].commands[0].endswith(
        "merge-processed --out data/processed_real_mix data/processed_real_whisper data/processed_real_aug")
    warm = set(shlex.split(records["pretrain"].commands[0]))
    assert {"name=real-ddsp", "init_from=pretrain/real-small", "trainer.max_steps=16140"} <= warm
    aug = shlex.split(records["pretrain-aug"].commands[0])
    assert {"name=real-ddsp-aug", "init_from=pretrain/real-ddsp", "paths.processed=data/processed_real_mix",
            "trainer.max_steps=8000", "trainer.discriminator=off", "model.decoder=ddsp", "export_dtype=float16",
            "trainer.batch_size=6", "trainer.learning_rate=3e-4"} <= set(aug)
    # the default base has no such steps, nor has a base folder copied from elsewhere under the same name
    assert not set(AUG_CHAIN) & set(_records(tmp_path / "plain", base="real-ddsp"))
    elsewhere = _real_root(tmp_path / "elsewhere", "real-ddsp-aug") / "pretrain" / "real-ddsp-aug"
    copied = _records(tmp_path / "copy", base=str(elsewhere))
    assert not set(AUG_CHAIN) & set(copied) and "copy-base" in copied["pretrain"].commands[0]


def test_the_augmented_chain_skips_what_exists(tmp_path):
    root = _real_root(tmp_path, "real-ddsp-aug")
    records = _records(root, base="real-ddsp-aug", example_source="vh")
    assert records["pretrain-aug"].status == "skipped" and records["pretrain"].status == "skipped"
    assert all(records[name].status == "skipped" for name in AUG_CHAIN)
    assert records["finetune"].status == "dry-run" and "base=pretrain/real-ddsp-aug" in records["finetune"].commands[0]
    # the augmented base is missing but its warm start and its data are there: only pretrain-aug trains
    import shutil

    shutil.move(root / "pretrain" / "real-ddsp-aug", root / "pretrain" / "real-ddsp")
    for relative in ("data/processed_real_mix/stats.json", "data/processed_real_mix/manifest.jsonl"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("{}")
    builder = bb.Builder(bb.BuildSettings(root=root, base="real-ddsp-aug", example_source="vh", dry_run=True),
                         echo=lambda line: None)
    assert builder.plan() & {*AUG_CHAIN, "pretrain", "preprocess-real"} == {"pretrain-aug"}
    # with the data gone, the chain before it runs too (the real pool's features are there)
    shutil.rmtree(root / "data" / "processed_real_mix")
    for relative in ("data/processed_real_whisper/stats.json", "data/processed_real_whisper/manifest.jsonl"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("{}")
    assert builder.plan() & {*AUG_CHAIN, "pretrain", "preprocess-real"} == set(AUG_CHAIN)


def test_the_words_base_trains_on_from_the_augmented_one_with_the_loss_on_the_words(tmp_path):
    records = _records(tmp_path / "fresh", base="real-ddsp-words")
    names = list(records)
    assert names[names.index("pretrain-aug") + 1] == "pretrain-words"
    assert all(records[name].status == "dry-run" for name in [*AUG_CHAIN, "pretrain-words"])
    aug, words = (set(shlex.split(records[name].commands[0])) for name in ("pretrain-aug", "pretrain-words"))
    assert {"name=real-ddsp-aug", "init_from=pretrain/real-ddsp", "trainer.max_steps=8000"} <= aug
    assert "loss.content=0" in aug  # the bases before it were made without the loss (now the training default)
    assert {"name=real-ddsp-words", "init_from=pretrain/real-ddsp-aug", "paths.processed=data/processed_real_mix",
            f"trainer.max_steps={bb.WORDS_STEPS}", "trainer.discriminator=off", "model.decoder=ddsp",
            "export_dtype=float16", "trainer.batch_size=6", "trainer.learning_rate=3e-4", "loss.content=10",
            "loss.content_encoder=wheel:base"} <= words and "loss.content=0" not in words
    # the augmented base's own build has no such step; --words-steps sets its length
    assert "pretrain-words" not in _records(tmp_path / "aug", base="real-ddsp-aug")
    args = bb._parser().parse_args(["--base", "real-ddsp-words", "--words-steps", "7", "--root", str(tmp_path)])
    assert bb.settings_from_args(args).words_steps == 7


def test_the_words_chain_trains_only_what_is_missing(tmp_path):
    root = _real_root(tmp_path, "real-ddsp-aug")  # the augmented base is there: the words base's warm start
    for name in ("stats.json", "manifest.jsonl"):
        (root / "data" / "processed_real_mix").mkdir(parents=True, exist_ok=True)
        (root / "data" / "processed_real_mix" / name).write_text("{}")
    builder = bb.Builder(bb.BuildSettings(root=root, base="real-ddsp-words", example_source="vh", dry_run=True),
                         echo=lambda line: None)
    assert builder.plan() & {*AUG_CHAIN, "pretrain-words", "pretrain"} == {"pretrain-words"}
    import shutil

    shutil.rmtree(root / "pretrain" / "real-ddsp-aug")  # no warm start: the augmented chain runs first
    assert {"pretrain", "pretrain-aug", "pretrain-words"} <= builder.plan()


def test_every_base_chain_names_optional_steps_in_order():
    optional = {step.name for step in bb.STEPS if step.optional}
    assert {name for chain in bb.BASE_CHAINS.values() for name in chain.steps} == optional
    for chain in bb.BASE_CHAINS.values():
        assert list(chain.steps) == [name for name in bb.STEP_NAMES if name in chain.steps]


def _processed(folder: Path, singers: dict[str, int], encoder: str = "whisper") -> None:
    folder.mkdir(parents=True)
    lines = []
    for singer, clips in singers.items():
        for index in range(clips):
            (folder / singer).mkdir(exist_ok=True)
            (folder / singer / f"c{index}.wav").write_bytes(b"w" * (index + 1))
            (folder / singer / f"c{index}.features.safetensors").write_bytes(b"f")
            lines.append(json.dumps({"audio": f"{singer}/c{index}.wav", "singer": singer}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "stats.json").write_text(json.dumps({"sample_rate": 44100, "content_encoder": {"name": encoder},
                                                   "singers": {singer: {"clips": n} for singer, n in singers.items()}}))


def test_merge_processed_links_singers_and_joins_manifests(tmp_path):
    helpers = bb.bundle_helpers
    first, second, out = tmp_path / "pool", tmp_path / "aug", tmp_path / "mix"
    _processed(first, {"va": 2, "s0": 1})
    _processed(second, {"va-f115p140": 2})
    assert helpers.merge_processed([first, second], out) == ["s0", "va", "va-f115p140"]
    assert (out / "manifest.jsonl").read_text() == (first / "manifest.jsonl").read_text() + \
        (second / "manifest.jsonl").read_text()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["content_encoder"] == {"name": "whisper"} and list(stats["singers"]) == ["s0", "va", "va-f115p140"]
    assert (out / "va-f115p140" / "c1.wav").samefile(second / "va-f115p140" / "c1.wav")
    # a source rewritten since (a new file, the same size) is linked again
    (first / "va" / "c0.wav").unlink()
    (first / "va" / "c0.wav").write_bytes(b"x")
    helpers.merge_processed([first, second], out)
    assert (out / "va" / "c0.wav").read_bytes() == b"x"
    other = tmp_path / "other"
    _processed(other, {"vb": 1}, encoder="hubert")
    with pytest.raises(helpers.HelperError, match="content_encoder differ"):
        helpers.merge_processed([first, other], tmp_path / "bad")
    with pytest.raises(helpers.HelperError, match="singer 'va' is also in another source"):
        helpers.merge_processed([first, first], tmp_path / "bad")
    with pytest.raises(helpers.HelperError, match="nothing/stats.json: missing"):
        helpers.merge_processed([first, tmp_path / "nothing"], tmp_path / "bad")


def test_augment_voices_writes_its_record_last_and_refuses_held_out_and_validation_voices(tmp_path):
    import numpy as np

    from tools import augment_voices

    corpus, out = tmp_path / "real", tmp_path / "aug"
    corpus.mkdir()
    (corpus / "voices.json").write_text(json.dumps({"voices": {"va": {"role": "train"}, "vh": {"role": "heldout"},
                                                              "vv": {"role": "validation"}}}))
    tone = 0.3 * np.sin(2 * np.pi * 150.0 * np.arange(8000) / 16000).astype(np.float32)
    for relative in ("va/speech/a.wav", "va/sung/b.wav"):
        (corpus / "raw" / relative).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(corpus / "raw" / relative), tone, 16000)
    args = ["--corpus", str(corpus), "--out", str(out), "--variants", "1.1:1.2", "0.9:0.8", "--seconds", "10",
            "--workers", "1"]
    assert augment_voices.main([*args, "--voices", "va"]) == 0
    record = json.loads((out / augment_voices.RECORD).read_text())
    assert record["variants"] == ["1.1:1.2", "0.9:0.8"] and record["voices"] == ["va"] and record["seed"] == 0
    assert record["clips"] == {"va-f090p080": ["va-f090p080/speech/a.wav", "va-f090p080/sung/b.wav"],
                               "va-f110p120": ["va-f110p120/speech/a.wav", "va-f110p120/sung/b.wav"]}
    assert sf.info(str(out / "va-f110p120" / "sung" / "b.wav")).frames == 8000
    with pytest.raises(SystemExit, match="vh is a held-out voice"):
        augment_voices.main([*args, "--voices", "vh"])
    with pytest.raises(SystemExit, match="vv is a validation voice"):
        augment_voices.main([*args, "--voices", "vv"])
