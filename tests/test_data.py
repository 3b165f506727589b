"""ManifestDataset, Batch and collate: crops, padding, speaker ids, resumable sampling, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from ai_singer.data import Batch, ManifestDataset, ResumableSampler, collate
from ai_singer.manifest import ManifestError
from processed_fixture import write_processed_dataset

HOP = 128


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_processed_dataset(tmp_path_factory.mktemp("processed"), singers=("alto", "tenor", "bass"),
                                   train_clips=3, val_clips=1, seconds=1.0, hop_length=HOP)


def test_split_singer_filter_and_speaker_ids(manifest):
    train = ManifestDataset(manifest, "train")
    val = ManifestDataset(manifest, "val")
    assert len(train) == 9 and len(val) == 3
    assert train.speakers == ["alto", "bass", "tenor"]
    ids = {train.records[i].singer: train[i].speaker_id for i in range(len(train))}
    assert ids == {"alto": 0, "bass": 1, "tenor": 2}
    only_tenor = ManifestDataset(manifest, "train", singers=["tenor"], speakers=train.speakers)
    assert len(only_tenor) == 3 and {only_tenor[i].speaker_id for i in range(3)} == {2}


def test_crop_matches_audio_and_features(manifest):
    full = ManifestDataset(manifest, "train", hop_length=HOP)
    cropped = ManifestDataset(manifest, "train", max_frames=40, hop_length=HOP, seed=3)
    for index in range(len(full)):
        whole, part = full[index], cropped[index]
        start = cropped.crop_start(index)
        assert part.f0.shape == (40,) and part.content.shape == (40, 16) and part.wav.shape == (40 * HOP,)
        torch.testing.assert_close(part.f0, whole.f0[start:start + 40])
        torch.testing.assert_close(part.content, whole.content[start:start + 40])
        torch.testing.assert_close(part.wav, whole.wav[start * HOP:(start + 40) * HOP])
    # crops depend on (seed, epoch, index) only: same epoch -> same crop, new epoch -> new crops
    starts = [cropped.crop_start(i) for i in range(len(cropped))]
    assert starts == [cropped.crop_start(i) for i in range(len(cropped))]
    cropped.set_epoch(1)
    assert starts != [cropped.crop_start(i) for i in range(len(cropped))]
    # (index, epoch) keys choose the epoch's crop whatever set_epoch says (persistent workers)
    torch.testing.assert_close(cropped[(2, 0)].f0, full[2].f0[starts[2]:starts[2] + 40])


def test_items_match_files_on_disk(manifest):
    dataset = ManifestDataset(manifest, "val")
    record = dataset.records[0]
    item = dataset[0]
    wav, sr = sf.read(record.audio, dtype="float32")
    np.testing.assert_allclose(item.wav.numpy(), wav)
    with safe_open(record.features, framework="pt") as handle:
        torch.testing.assert_close(item.content, handle.get_tensor("content").float())
    assert item.content.dtype == torch.float32


def test_collate_pads_and_records_lengths(manifest):
    dataset = ManifestDataset(manifest, "train", hop_length=HOP)
    long_item, short_item = dataset[0], dataset[1]
    short_item.content, short_item.f0 = short_item.content[:50], short_item.f0[:50]
    short_item.voiced, short_item.volume, short_item.wav = short_item.voiced[:50], short_item.volume[:50], short_item.wav[:50 * HOP]
    batch = collate([long_item, short_item])
    n = long_item.f0.shape[0]
    assert batch.content.shape == (2, 16, n) and batch.f0.shape == (2, n) and batch.wav.shape == (2, 1, n * HOP)
    assert batch.lengths.tolist() == [n, 50]
    assert torch.all(batch.f0[1, 50:] == 0) and torch.all(batch.wav[1, 0, 50 * HOP:] == 0)
    torch.testing.assert_close(batch.content[0], long_item.content.T)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.spec is None and moved.speaker_ids.dtype == torch.long


def test_resumable_sampler_continues_where_it_stopped():
    data = list(range(10))
    sampler = ResumableSampler(data, num_replicas=1, rank=0, seed=5)
    sampler.set_position(epoch=2)
    full = list(sampler)
    sampler.set_position(epoch=2, skip=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.with_epoch = True
    assert list(sampler) == [(i, 2) for i in full[4:]]
    shards = [ResumableSampler(data, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for shard in shards:
        shard.set_position(epoch=0)
    assert sorted(list(shards[0]) + list(shards[1])) == data


def test_clear_errors(manifest, tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        ManifestDataset(tmp_path / "nope" / "manifest.jsonl")
    with pytest.raises(ManifestError, match="'soprano' has no clips"):
        ManifestDataset(manifest, "train", singers=["soprano"])
    dataset = ManifestDataset(manifest, "val")
    record = dataset.records[0]
    moved = record.features.with_suffix(".bak")
    record.features.rename(moved)
    try:
        with pytest.raises(ManifestError, match="missing") as info:
            dataset[0]
        assert str(record.features) in str(info.value)
    finally:
        moved.rename(record.features)
    bad = tmp_path / "manifest.jsonl"
    bad.write_text(json.dumps({"singer": "x"}) + "\n")
    with pytest.raises(ManifestError, match="line 1"):
        ManifestDataset(bad)
