"""A singer's voice print (ai_singer/voice_print.py) and the refinement's pull toward it (``refine.speaker_weight``).

What a user relies on: the print is the mean Whisper state over the singer's clips (long clips included), it
travels in the singer's folder with its hash, a singer fine-tuned before prints existed gets one from its processed
clips without its adapter changing, a blend gets its parents' weighted print, conversion pulls each piece's average
state toward the singer's print, and a singer without one still converts, with a warning that says so and how to
make one.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import harmonic
from test_infer import conf_settings, make_adapter, make_base
from test_refine import toy_piece, vocal

from ai_singer import checkpoint
from ai_singer.errors import UserError
from ai_singer.infer import Converter
from ai_singer.voice_print import (VOICE_PRINT_FILE, VoicePrint, add_voice_print, blend_voice_prints,
                                   compute_voice_print, load_voice_print, parent_prints,
                                   save_voice_print)


def _clips(sr: int = 44100) -> list[tuple[np.ndarray, int]]:
    return [(harmonic(220.0, sr, 0.6, amplitude=0.3), sr), (harmonic(330.0, sr, 1.0, amplitude=0.2), sr)]


def test_the_voice_print_is_the_mean_encoder_state_over_every_frame_of_every_clip(tiny_whisper, tmp_path):
    from ai_singer.content_loss import ContentLoss

    clips = _clips()
    printed = compute_voice_print(str(tiny_whisper[0]), clips)
    words = ContentLoss(str(tiny_whisper[0]), 44100)
    with torch.no_grad():
        states = torch.cat([words.features(torch.from_numpy(audio).reshape(1, -1))[0] for audio, _ in clips])
    assert printed.clips == 2 and printed.frames == states.shape[0] == 30 + 50  # 50 encoder frames per second
    torch.testing.assert_close(printed.mean, states.mean(0))
    save_voice_print(tmp_path, printed)
    loaded = load_voice_print(tmp_path)
    torch.testing.assert_close(loaded.mean, printed.mean, rtol=0, atol=0)
    assert (loaded.encoder, loaded.clips, loaded.frames) == (str(tiny_whisper[0]), 2, 80)
    assert load_voice_print(tmp_path / "nothing") is None  # a singer without one


def test_a_clip_longer_than_whisper_hears_is_averaged_window_by_window(tiny_whisper, monkeypatch):
    import ai_singer.voice_print as module

    monkeypatch.setattr(module, "WINDOW_SECONDS", 1.0)
    long = harmonic(200.0, 16000, 2.5, amplitude=0.3)
    printed = compute_voice_print(str(tiny_whisper[0]), [(long, 16000)])
    assert printed.clips == 1 and printed.frames == 50 + 50 + 25


def test_no_audio_and_a_damaged_file_are_refused_naming_the_reason(tiny_whisper, tmp_path):
    with pytest.raises(ValueError, match="no audio of at least 0.1 s"):
        compute_voice_print(str(tiny_whisper[0]), [(np.zeros(100, dtype=np.float32), 16000)])
    (tmp_path / VOICE_PRINT_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=f"{VOICE_PRINT_FILE}: not a readable voice print"):
        load_voice_print(tmp_path)


def test_a_blend_of_prints_is_their_weighted_mean_and_needs_one_encoder():
    a = VoicePrint(mean=torch.zeros(4), encoder="wheel:tiny.en", clips=2, frames=10)
    b = VoicePrint(mean=torch.ones(4), encoder="wheel:tiny.en", clips=3, frames=20)
    blended = blend_voice_prints([(a, 1.0), (b, 3.0)])
    torch.testing.assert_close(blended.mean, torch.full((4,), 0.75))
    assert (blended.clips, blended.frames) == (5, 30)
    with pytest.raises(ValueError, match="different encoders"):
        blend_voice_prints([(a, 1.0), (VoicePrint(torch.ones(4), "wheel:base", 1, 1), 1.0)])


def test_parents_prints_blend_only_when_every_parent_has_one_from_one_encoder(tmp_path):
    folders = {name: tmp_path / name for name in ("ann", "bo", "cy", "dee")}
    save_voice_print(folders["ann"], VoicePrint(torch.zeros(4), "wheel:tiny.en", 2, 10))
    save_voice_print(folders["bo"], VoicePrint(torch.ones(4), "wheel:tiny.en", 3, 20))
    save_voice_print(folders["cy"], VoicePrint(torch.ones(4), "wheel:base", 1, 5))
    folders["dee"].mkdir()

    found = parent_prints([folders["ann"], folders["bo"]], ["ann", "bo"], [1.0, 3.0])
    torch.testing.assert_close(found.blended.mean, torch.full((4,), 0.75))
    assert (found.missing, found.encoders) == ([], ["wheel:tiny.en"])

    no_print = parent_prints([folders["ann"], folders["dee"]], ["ann", "dee"], [1.0, 1.0])
    assert (no_print.blended, no_print.missing) == (None, ["dee"])
    mixed = parent_prints([folders["ann"], folders["cy"]], ["ann", "cy"], [1.0, 1.0])
    assert (mixed.blended, mixed.missing, mixed.encoders) == (None, [], ["wheel:base", "wheel:tiny.en"])

    (folders["dee"] / VOICE_PRINT_FILE).write_bytes(b"damaged")
    with pytest.raises(ValueError, match="dee.*not a readable voice print"):
        parent_prints([folders["ann"], folders["dee"]], ["ann", "dee"], [1.0, 1.0])


def test_the_speaker_term_pulls_the_piece_average_toward_the_voice_print(tiny_whisper, one_torch_thread):
    from ai_singer.content_loss import ContentLoss
    from ai_singer.refine import LatentRefiner, RefineSettings

    toy, content, f0, ones, t = toy_piece()
    source = (0.3 * np.sin(2 * np.pi * 800 * t)).astype(np.float32)
    with torch.no_grad():  # a "singer" whose average state is that of a high partial
        other = torch.from_numpy((0.3 * np.sin(2 * np.pi * 3300 * t)).astype(np.float32)).reshape(1, -1)
        print_mean = ContentLoss(str(tiny_whisper[0]), toy.sample_rate).features(other)[0].mean(0)

    def refine(weight: float, voice_print):
        refiner = LatentRefiner(RefineSettings(steps=20, learning_rate=0.2, prior_weight=0.0, timbre_weight=0.0,
                                               encoder=str(tiny_whisper[0]), speaker_weight=weight), toy.sample_rate)
        return refiner.convert(toy, content, f0, ones, ones, torch.zeros(1, 2), source,
                               torch.Generator().manual_seed(0), noise_scale=0.35, voice_print=voice_print)[1]

    words_only, pulled = refine(0.0, print_mean), refine(5.0, print_mean)
    assert "speaker_l1_after" not in words_only and "speaker_l1_after" not in refine(5.0, None)
    assert pulled["speaker_l1_after"] < 0.8 * pulled["speaker_l1_before"]
    with pytest.raises(UserError, match="voice print.*has 3 values"):
        refine(1.0, torch.zeros(3))


def test_refine_speaker_weight_below_zero_is_refused():
    with pytest.raises(UserError, match=r"refine.speaker_weight=-1"):
        conf_settings("refine.speaker_weight=-1")


@pytest.fixture()
def singer_root(tmp_path):
    base_dir = make_base(tmp_path)
    make_adapter(tmp_path, base_dir, "alto", seed=1)
    return tmp_path


def _processed(root, singer: str = "alto"):
    """A processed dataset with two train clips of ``singer`` (and one val clip, which the print leaves out)."""
    data = root / "processed"
    (data / singer).mkdir(parents=True)
    rows = []
    for index, (split, hz) in enumerate([("train", 220.0), ("train", 330.0), ("val", 440.0)]):
        name = f"{singer}/clip{index}.wav"
        sf.write(data / name, harmonic(hz, 44100, 0.5, amplitude=0.3), 44100)
        rows.append({"audio": name, "features": f"{singer}/clip{index}.features.safetensors", "n_frames": 43,
                     "seconds": 0.5, "singer": singer, "source": f"{singer}/x.wav", "split": split,
                     "f0_median_hz": hz})
    (data / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def test_an_old_singer_gets_a_voice_print_from_its_clips_with_its_adapter_unchanged(singer_root, tiny_whisper):
    from ai_singer.cli import main

    folder = singer_root / "singers" / "alto"
    before = (folder / "adapter.safetensors").read_bytes()
    data = _processed(singer_root)
    assert main(["voice-print", "alto", "--data", str(data), "--encoder", str(tiny_whisper[0]),
                 "--singers-dir", str(singer_root / "singers")]) == 0
    printed = load_voice_print(folder)
    assert printed.clips == 2 and printed.encoder == str(tiny_whisper[0])  # the train clips only
    record = yaml.safe_load((folder / "adapter.yaml").read_text())["voice_print"]
    assert record["sha256"] == checkpoint.sha256_file(folder / VOICE_PRINT_FILE) and record["clips"] == 2
    assert (folder / "adapter.safetensors").read_bytes() == before
    checkpoint.load_adapter(folder)  # still a valid adapter

    with pytest.raises(ValueError, match=r"manifest.jsonl.*'bass' has no clips.*--singer NAME"):
        add_voice_print(folder, data, str(tiny_whisper[0]), singer="bass")
    assert main(["voice-print", "alto", "--data", str(singer_root / "nowhere"), "--encoder", str(tiny_whisper[0]),
                 "--singers-dir", str(singer_root / "singers")]) == 2


def test_a_written_blend_keeps_its_parents_weighted_voice_print(singer_root, tiny_whisper):
    from ai_singer.blend import write_blend
    from ai_singer.singer_spec import parse_singer_spec

    make_adapter(singer_root, singer_root / "pretrain" / "tiny", "bass", seed=2)
    singers = singer_root / "singers"
    spec = parse_singer_spec("alto:0.25,bass:0.75", "singer")
    write_blend(spec, [singers / "alto", singers / "bass"], singers / "without")
    assert load_voice_print(singers / "without") is None  # a parent has none: the blend has none
    for name, value in (("alto", 0.0), ("bass", 1.0)):
        adapter = checkpoint.load_adapter(singers / name)
        checkpoint.save_adapter(singers / name, adapter.tensors, adapter.config,
                                voice_print=VoicePrint(torch.full((4,), value), str(tiny_whisper[0]), 1, 50))
    write_blend(spec, [singers / "alto", singers / "bass"], singers / "mix")
    torch.testing.assert_close(load_voice_print(singers / "mix").mean, torch.full((4,), 0.75))


def test_conversion_pulls_toward_the_singer_print_and_warns_for_a_singer_without_one(singer_root, tiny_hubert_dir,
                                                                                    tiny_whisper, one_torch_thread):
    def converter():
        settings = conf_settings("f0.method=dio", "refine.steps=2", f"refine.encoder={tiny_whisper[0]}",
                                 "refine.speaker_weight=1")
        return Converter(singer_root / "pretrain" / "tiny", {"name": "hubert", "path": str(tiny_hubert_dir),
                                                             "layer": 2}, settings, singer_root / "singers",
                         device="cpu")

    mono = vocal()
    plain = converter().convert_vocal(mono, 44100, "alto")
    assert any("has no voice print" in w and "ai-singer voice-print" in w for w in plain.warnings)
    assert "speaker_l1_before" not in plain.refine and plain.audio.shape == mono.shape

    folder = singer_root / "singers" / "alto"
    add_voice_print(folder, _processed(singer_root), str(tiny_whisper[0]))
    pulled = converter().convert_vocal(mono, 44100, "alto")
    assert not any("voice print" in w for w in pulled.warnings)
    assert pulled.refine["speaker_l1_after"] <= pulled.refine["speaker_l1_before"] + 1e-6
    assert pulled.audio.shape == mono.shape and not np.array_equal(pulled.audio, plain.audio)
