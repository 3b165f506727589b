"""tools/build_bundle.py: a tiny bundle built end to end with the project's own commands (in this
interpreter, the same command lines the script runs as subprocesses), skipping, --force, the manifest and
the size limit. ``tiny_bundle()`` is shared with tests/test_demo.py (built once per session)."""
from __future__ import annotations

import hashlib
import importlib.util
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
    assert [r.step.name for r in result.records] == list(bb.STEP_NAMES)
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
    assert (root / "data/synth/example_raw/example/p000.wav").read_bytes() == \
        (root / "data/synth/raw/s02_tenor/p000.wav").read_bytes()


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
    assert status == {**{name: "skipped" for name in bb.STEP_NAMES}, "song": "ran", "manifest": "ran"}
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
        bb.Builder(bb.tiny_settings(root, in_process=True), echo=lambda line: None).run(["preprocess-base"])


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
