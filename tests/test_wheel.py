"""A built wheel works from any folder: build it, install it in a fresh virtual environment, run from an empty folder.

Offline: the wheel is built without build isolation (this environment's setuptools) and installed without
dependencies; the fresh environment sees this one's packages (torch stays this environment's CPU build)
through a ``.pth`` file written after the install, so pip never touches this environment's ai_singer.
"""
from __future__ import annotations

import os
import runpy
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
#: What a source distribution holds besides the bundled files (setup.py adds those).
SOURCE_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "ai_singer")


def _run(args: list, cwd: Path, env: dict, timeout: int = 600) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{output[-4000:]}"
    return output


def _source_tree(dest: Path) -> Path:
    """The repository's files a build reads (the sdist's content), copied so the build writes nothing here."""
    dest.mkdir(parents=True)
    for name in SOURCE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_bundle"))
        else:
            shutil.copy2(source, dest / name)
    for relative in runpy.run_path(str(REPO / "setup.py"), run_name="not_main")["bundled_files"]():
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, dest / relative)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """(bin folder of a fresh venv with the built wheel installed, environment to run it in)."""
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("wheel")
    source = _source_tree(root / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", root / "dist", source], root, dict(os.environ))
    (wheel,) = (root / "dist").glob("ai_singer-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], root, dict(os.environ))
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         root, dict(os.environ))
    purelib = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                           text=True).strip())
    ours = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    (purelib / "_ai_singer_test_deps.pth").write_text("\n".join(ours) + "\n")  # after the install: pip never sees them
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "AI_SINGER_CONF", "AI_SINGER_BUNDLE")}
    env["OMP_NUM_THREADS"] = "1"
    return python.parent, env


def test_the_wheel_carries_the_bundle_and_imports_from_the_venv(installed, tmp_path):
    bin_dir, env = installed
    out = _run([bin_dir / "python", "-c", "import ai_singer, torch; from ai_singer.bundle import bundle_root; "
                                         "from ai_singer.conf_dir import conf_dir; "
                                         "print(ai_singer.__file__, bundle_root(), conf_dir(), torch.__version__)"],
               tmp_path, env)
    package, root, conf, torch_version = out.split()
    import torch

    venv = bin_dir.parent
    assert Path(package).is_relative_to(venv) and Path(root) == Path(package).parent / "_bundle"
    assert Path(conf) == Path(root) / "conf" and torch_version == torch.__version__
    from ai_singer.bundle import default_base

    for entry in (f"pretrain/{default_base()}/generator.safetensors", "pretrain/content/synth-hubert/model.safetensors",
                  "singers/example/adapter.safetensors", "data/examples/song01/vocals.flac", "tools/synth/corpus.py"):
        assert (Path(root) / entry).is_file(), entry


def test_the_demo_runs_from_an_empty_folder(installed, tmp_path):
    bin_dir, env = installed
    out = _run([bin_dir / "ai-singer", "demo", "--convert-arg", "progress=false"], tmp_path, env)
    assert "_bundle" in out and str(bin_dir.parent) in out  # the wheel's bundle, not this checkout
    mix = tmp_path / "outputs" / "demo" / "song01" / "mix.wav"
    audio, rate = sf.read(mix)
    source = sf.info(str(REPO / "data/examples/song01/vocals.flac"))
    assert rate == source.samplerate and abs(len(audio) - source.frames) <= rate // 100
    assert np.sqrt(np.mean(np.square(audio))) > 1e-3  # not silent
    listing = _run([bin_dir / "ai-singer", "singers"], tmp_path, env)
    from ai_singer.bundle import default_base

    assert f"{default_base()} (bundled)" in listing and "example (bundled)" in listing


def test_the_whole_path_runs_from_an_empty_folder(installed, tmp_path):
    """demo --full (the bundled synthetic-singer generator), then the README's own commands with the defaults:
    the content encoder, base and example song given by their bundled relative paths."""
    bin_dir, env = installed
    cli = bin_dir / "ai-singer"
    _run([cli, "demo", "--full", "--steps", "2", "--phrases", "2", "--preprocess-arg", "num_workers=0",
          "--preprocess-arg", "progress=false", "--train-arg", "retrieval_centroids=0",
          "--convert-arg", "progress=false"], tmp_path, env)
    assert (tmp_path / "outputs/demo_full/converted/song01/mix.wav").is_file()
    _run([cli, "preprocess", "paths.raw=outputs/demo_full/recordings/raw", "num_workers=0", "progress=false"],
         tmp_path, env)
    singer = next(p.name for p in (tmp_path / "data/processed").iterdir() if (p / "pitch_range.png").is_file())
    from ai_singer.bundle import default_base

    _run([cli, "train", "mode=finetune", f"singer={singer}", f"base=pretrain/{default_base()}", "trainer.max_steps=2",
          "trainer.batch_size=2", "trainer.num_workers=0", "trainer.eval_every=0", "retrieval_centroids=0"],
         tmp_path, env)
    _run([cli, "convert", "songs=data/examples/song01", f"singer={singer}", "progress=false"], tmp_path, env)
    assert (tmp_path / "outputs/song01/mix.wav").is_file() and (tmp_path / "singers" / singer).is_dir()
    assert not (tmp_path / "pretrain").exists()  # the bundled base was used in place, never copied here


def test_the_web_ui_command_is_there_when_it_exists(installed, tmp_path):
    bin_dir, env = installed
    if " ui " not in _run([bin_dir / "ai-singer", "--help"], tmp_path, env).replace("\n", " "):
        pytest.skip("no `ai-singer ui` command in this version")
    _run([bin_dir / "ai-singer", "ui", "--help"], tmp_path, env)
