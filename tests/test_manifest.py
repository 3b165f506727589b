"""manifest.jsonl / stats.json round trips, clear errors, and the deterministic train/val split."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import yaml

from ai_singer.conf_dir import conf_dir
from ai_singer.manifest import (DatasetStats, ManifestEntry, ManifestError, assign_splits, read_manifest,
                                read_stats, singer_stats, write_manifest, write_stats)


def _entry(singer: str, index: int, split: str = "train") -> ManifestEntry:
    return ManifestEntry(singer=singer, audio=f"{singer}/c{index}.wav", features=f"{singer}/c{index}.features.safetensors",
                         seconds=1.5, n_frames=129, split=split, source=f"{singer}/take.wav", f0_median_hz=220.0)


def test_manifest_round_trip_and_filters(tmp_path):
    entries = [_entry("alice", 0), _entry("alice", 1, "val"), _entry("bob", 0)]
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, entries)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["singer"] for line in lines)
    assert read_manifest(path) == entries
    assert read_manifest(path, split="val") == [entries[1]]
    assert read_manifest(path, singers=["bob"]) == [entries[2]]
    assert not list(tmp_path.glob("*.tmp"))


def test_manifest_errors_name_file_and_line(tmp_path):
    with pytest.raises(ManifestError, match="manifest.jsonl.*not found"):
        read_manifest(tmp_path / "manifest.jsonl")
    path = tmp_path / "manifest.jsonl"
    good = json.dumps(_entry("alice", 0).to_json())
    path.write_text(good + "\n" + json.dumps({"singer": "alice"}) + "\n")
    with pytest.raises(ManifestError, match=r"manifest.jsonl: line 2: missing keys"):
        read_manifest(path)
    path.write_text(good.replace('"train"', '"test"') + "\n")
    with pytest.raises(ManifestError, match="line 1: split must be one of"):
        read_manifest(path)


def test_stats_round_trip_and_percentiles(tmp_path):
    f0 = np.concatenate([np.full(90, 200.0), np.full(10, 400.0)])
    stats = singer_stats([1.0, 2.5], f0)
    assert stats.clips == 2 and stats.seconds == 3.5
    assert stats.f0_median_hz == 200.0 and stats.f0_p05_hz == 200.0 and stats.f0_p95_hz == 400.0
    assert (stats.f0_min_hz, stats.f0_max_hz) == (200.0, 400.0)
    dataset = DatasetStats(sample_rate=44100, hop_length=512, content_encoder_name="hubert", content_dim=768,
                           f0_method="harvest", singers={"alice": stats},
                           content_encoder_path="pretrain/content/hubert", content_layer=12, content_final_proj=False)
    write_stats(tmp_path / "stats.json", dataset)
    raw = json.loads((tmp_path / "stats.json").read_text())
    assert raw["format_version"] == 1 and raw["content_encoder"] == {
        "name": "hubert", "dim": 768, "path": "pretrain/content/hubert", "layer": 12, "final_proj": False}
    assert raw["singers"]["alice"]["f0_median_hz"] == 200.0
    assert read_stats(tmp_path / "stats.json") == dataset
    with pytest.raises(ValueError, match="voiced"):
        singer_stats([1.0], np.zeros(0))
    (tmp_path / "bad.json").write_text('{"format_version": 7}')
    with pytest.raises(ManifestError, match="bad.json: malformed stats"):
        read_stats(tmp_path / "bad.json")


def test_stats_written_before_the_full_encoder_record_still_read(tmp_path):
    """Older stats.json files record only {name, dim}: the other encoder settings read as unknown (None)."""
    old = {"format_version": 1, "sample_rate": 44100, "hop_length": 512,
           "content_encoder": {"name": "hubert", "dim": 256}, "f0_method": "harvest", "singers": {}}
    (tmp_path / "stats.json").write_text(json.dumps(old))
    stats = read_stats(tmp_path / "stats.json")
    assert stats.content_encoder == {"name": "hubert", "dim": 256, "path": None, "layer": None, "final_proj": None}
    old["content_encoder"]["final_proj"] = "maybe"
    (tmp_path / "stats.json").write_text(json.dumps(old))
    with pytest.raises(ManifestError, match="final_proj"):
        read_stats(tmp_path / "stats.json")


def test_split_is_deterministic_order_independent_and_covers_every_singer():
    clips = {"alice": [f"alice/c{i}.wav" for i in range(40)], "bob": ["bob/a.wav", "bob/b.wav"],
             "solo": ["solo/only.wav"]}
    first = assign_splits(clips, val_fraction=0.1, min_val_clips=1, seed=0)
    shuffled = {singer: random.Random(1).sample(keys, len(keys)) for singer, keys in reversed(list(clips.items()))}
    assert assign_splits(shuffled, val_fraction=0.1, min_val_clips=1, seed=0) == first
    for singer, keys in clips.items():
        splits = [first[key] for key in keys]
        if len(keys) >= 2:
            assert "val" in splits and "train" in splits, singer
        else:
            assert splits == ["train"]
    # a different seed gives a different (but equally valid) split
    assert assign_splits(clips, 0.1, 1, seed=1) != first


def test_split_fraction_and_stability_when_clips_are_added():
    keys = [f"s/c{i:04d}.wav" for i in range(2000)]
    splits = assign_splits({"s": keys}, val_fraction=0.1, min_val_clips=1, seed=0)
    share = sum(split == "val" for split in splits.values()) / len(keys)
    assert 0.08 < share < 0.12
    more = assign_splits({"s": keys + [f"s/new{i}.wav" for i in range(100)]}, 0.1, 1, seed=0)
    assert all(more[key] == splits[key] for key in keys)  # existing clips keep their split
    with pytest.raises(ValueError, match="val_fraction"):
        assign_splits({"s": keys}, 1.0, 1, 0)


def test_split_settings_come_from_conf_only():
    from ai_singer.config import conf_group
    from ai_singer.preprocess_settings import SplitSettings

    with pytest.raises(TypeError):
        SplitSettings()  # type: ignore[call-arg]
    values = yaml.safe_load(open(f"{conf_dir()}/split/default.yaml"))
    assert SplitSettings(**values) == SplitSettings(**conf_group("split"))
