"""Bundled files (ai_singer.bundle): found through the package, and a name is the user's first, then the bundle's.

The wheel itself is built, installed and run from an empty folder in tests/test_wheel.py (slow)."""
from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import pytest
import yaml

from ai_singer import bundle
from ai_singer.catalog import list_installed
from ai_singer.convert import InferError, resolve_base_dir, singer_dir

REPO = Path(__file__).resolve().parent.parent


def _adapter(folder: Path, singer: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter.yaml").write_text(yaml.safe_dump({"kind": "adapter", "singer": singer, "method": "lora",
                                                         "base_name": "synth-small", "stats": {}}))
    (folder / "adapter.safetensors").write_bytes(b"")
    return folder


def _base(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"kind": "base", "generator_sha256": tag, "speakers": []}))
    return folder


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A bundle (singers/example, pretrain/synth-small, data/examples/song01) and an empty working folder."""
    root = tmp_path / "bundle"
    _adapter(root / "singers" / "example", "example")
    _base(root / "pretrain" / "synth-small", "bundled")
    (root / "data" / "examples" / "song01").mkdir(parents=True)
    monkeypatch.setattr(bundle, "bundle_root", lambda: root)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return root


def test_a_checkout_is_its_own_bundle():
    """An editable install (this checkout) reads conf/ and the bundled models where they are in the repository."""
    from ai_singer.conf_dir import conf_dir

    assert bundle.bundle_root() == REPO
    assert Path(conf_dir()) == REPO / "conf"
    base = f"pretrain/{bundle.default_base()}/config.yaml"
    assert bundle.bundled(base) == REPO / base
    assert bundle.bundled("pretrain/no-such-base") is None
    for entry in bundle.bundled_entries(REPO):
        assert (REPO / entry).exists(), entry


def test_lookup_order_is_the_users_folder_then_the_bundle(shipped, tmp_path):
    assert bundle.lookup_order("example", "my_singers", bundle.SINGERS) == [
        Path("my_singers/example"), shipped / "singers" / "example"]
    assert bundle.lookup_order("data/examples/song01") == [Path("data/examples/song01"),
                                                           shipped / "data/examples/song01"]
    absolute = tmp_path / "elsewhere" / "example"
    assert bundle.lookup_order(absolute, "my_singers", bundle.SINGERS) == [absolute]  # a path given: only itself


def test_run_in_the_bundle_folder_each_place_is_searched_once(shipped, monkeypatch):
    monkeypatch.chdir(shipped)
    assert bundle.lookup_order("example", "singers", bundle.SINGERS) == [Path("singers/example")]


def test_without_a_bundle_only_the_users_folder_is_searched(monkeypatch):
    monkeypatch.setattr(bundle, "bundle_root", lambda: None)
    assert bundle.lookup_order("example", "singers", bundle.SINGERS) == [Path("singers/example")]
    assert bundle.locate_path("pretrain/content/synth-hubert") == Path("pretrain/content/synth-hubert")


def test_a_relative_path_missing_here_is_the_bundled_copy(shipped):
    assert bundle.locate_path("data/examples/song01") == shipped / "data/examples/song01"
    Path("data/examples/song01").mkdir(parents=True)
    assert bundle.locate_path("data/examples/song01") == Path("data/examples/song01")  # the user's wins
    assert bundle.locate_path("data/nothing") == Path("data/nothing")  # as given: errors name the user's path


def test_a_singer_is_the_users_first_then_the_bundled_one(shipped):
    assert singer_dir("example", "singers") == shipped / "singers" / "example"
    mine = _adapter(Path("singers") / "example", "my own example")
    _adapter(Path("singers") / "alto", "alto")
    assert singer_dir("example", "singers") == mine
    assert singer_dir("alto", "singers") == Path("singers") / "alto"
    with pytest.raises(InferError) as caught:
        singer_dir("tenor", "singers")
    message = str(caught.value)
    assert f"no adapter at singers/tenor or {shipped / 'singers' / 'tenor'}" in message
    assert "Available singers: alto, example" in message and "bundled" not in message  # example: the user's


def test_an_unknown_singer_lists_the_bundled_ones_too(shipped):
    _adapter(Path("singers") / "alto", "alto")
    with pytest.raises(InferError, match="Available singers: alto; bundled: example"):
        singer_dir("tenor", "singers")


def test_a_base_is_the_users_first_then_the_bundled_one(shipped):
    bundled_base = shipped / "pretrain" / "synth-small"
    assert resolve_base_dir(None, "synth-small", "pretrain") == bundled_base  # the name an adapter records
    assert resolve_base_dir("pretrain/synth-small", None, "pretrain") == bundled_base  # base=<path>
    mine = _base(Path("pretrain") / "synth-small", "mine")
    assert resolve_base_dir(None, "synth-small", "pretrain") == mine
    assert resolve_base_dir("pretrain/synth-small", None, "pretrain") == mine
    with pytest.raises(InferError, match=f"or {shipped / 'pretrain' / 'other'}"):
        resolve_base_dir("other", None, "pretrain")


def test_the_catalog_lists_the_bundled_entries_the_user_does_not_shadow(shipped):
    _adapter(Path("singers") / "alto", "alto")
    bases, adapters = list_installed("pretrain", "singers")
    assert [(b.name, b.bundled) for b in bases] == [("synth-small", True)]
    assert [(a.name, a.bundled) for a in adapters] == [("alto", False), ("example", True)]
    _adapter(Path("singers") / "example", "mine")
    _, adapters = list_installed("pretrain", "singers")
    assert [(a.name, a.bundled) for a in adapters] == [("alto", False), ("example", False)]


def test_the_singers_command_lists_the_bundle_from_an_empty_folder(tmp_path, monkeypatch, capsys):
    from ai_singer.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["singers"]) == 0
    out = capsys.readouterr().out
    assert f"{bundle.default_base()} (bundled): sha256" in out and "example (bundled): lora" in out
    assert f"ships with ai_singer, in {REPO}" in out


def test_the_content_encoder_is_found_in_the_bundle_and_recorded_as_given(tiny_hubert_dir, tmp_path, monkeypatch):
    from ai_singer.features.content import describe_encoder, load_content_encoder

    root = tmp_path / "bundle"
    shutil.copytree(tiny_hubert_dir, root / "pretrain" / "content" / "tiny")
    monkeypatch.setattr(bundle, "bundle_root", lambda: root)
    monkeypatch.chdir(tmp_path)
    encoder = load_content_encoder("hubert", "pretrain/content/tiny", layer=1)
    assert describe_encoder(encoder)["path"] == "pretrain/content/tiny"  # finds it again the same way anywhere


def test_the_wheel_and_sdist_carry_exactly_the_bundled_list():
    """setup.py's copy list is ai_singer.bundle.bundled_entries (pretrain/bundle.json names the base and the
    bundled folders); the sdist command adds the same files."""
    from distutils.filelist import FileList

    from setuptools import Distribution

    build = runpy.run_path(str(REPO / "setup.py"), run_name="not_main")
    files = {str(path) for path in build["bundled_files"]()}
    base = bundle.default_base()
    assert {"conf/infer.yaml", "conf/paths/default.yaml", f"pretrain/{base}/generator.safetensors",
            "pretrain/content/synth-hubert/model.safetensors", "singers/example/adapter.yaml",
            "data/examples/song01/vocals.flac", "tools/synth/corpus.py", "pretrain/BUNDLE.md",
            "pretrain/bundle.json"} <= files
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in files)
    entries = bundle.bundled_entries(REPO)
    assert all(any(name == entry or name.startswith(entry + "/") for entry in entries) for name in files)
    assert not any(name.startswith("pretrain/") and name.split("/")[1] not in (base, "content", "BUNDLE.md",
                                                                               "bundle.json") for name in files)
    sdist = build["SdistWithBundle"](Distribution())
    sdist.filelist = FileList()
    sdist.add_bundle()
    assert set(sdist.filelist.files) == files
