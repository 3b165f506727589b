"""Training runs on the tiny model and a tiny processed dataset: artifacts, resume, retention, errors."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import TINY_WHISPER_D_MODEL

from ai_singer import checkpoint as ckpt
from ai_singer.adapters import PEFT_METHODS
from ai_singer.conf_dir import conf_dir
from ai_singer.config import compose as compose_config
from ai_singer.config import load_settings
from ai_singer.manifest import ManifestError
from ai_singer.train import run_training
from ai_singer.train_settings import (AudioSettings, LossWeights, PathsSettings, TrainerSettings, TrainSetupError,
                                      resolve_discriminator, typed_config, validate_config)
from processed_fixture import write_processed_dataset

SR, HOP = 16000, 512  # the tiny model's decoder upsamples 8 x 8 x 8 = 512
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here on one torch thread."""


def overrides_for(root: Path, processed: Path) -> list[str]:
    return [f"paths.processed={processed}", f"paths.pretrain={root}/pretrain", f"paths.singers={root}/singers",
            f"paths.runs={root}/runs", "model=tiny", "trainer=tiny", f"audio.sample_rate={SR}", "audio.n_fft=512",
            "audio.win_length=512", "audio.n_mels=40", "loss.content=0",  # the Whisper loss: its own tests
            "voice_print=null"]  # the singer's voice print (a Whisper encoder at export): its own test below


def make_config(root: Path, processed: Path, *extra: str):
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        return typed_config(compose("train", overrides=overrides_for(root, processed) + list(extra)))


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("processed")
    write_processed_dataset(root, singers=("alto", "tenor"), train_clips=3, val_clips=1, seconds=1.0,
                            sample_rate=SR, hop_length=HOP)
    return root


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, processed) -> Path:
    """A tiny base pretrained for 2 steps (shared by the fine-tuning tests)."""
    root = tmp_path_factory.mktemp("base_run")
    result = run_training(make_config(root, processed, "trainer.max_steps=2", "name=tinybase"))
    return result.artifact_dir


def file_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------------------------------- artifacts

def test_pretrain_exports_a_base_and_logs(tmp_path, processed):
    cfg = make_config(tmp_path, processed, "trainer.max_steps=2", "trainer.eval_every=2", "name=b")
    result = run_training(cfg)
    assert result.step == 2 and not result.interrupted
    assert result.artifact_dir == tmp_path / "pretrain" / "b"
    base = ckpt.load_base(result.artifact_dir, with_discriminator=True)
    assert base.speakers == ["alto", "tenor"]
    assert base.config["content_encoder"] == {"name": "tiny-hubert", "dim": 16, "path": "pretrain/content/tiny-hubert",
                                              "layer": 2, "final_proj": False}  # copied from stats.json
    assert base.config["weights_dtype"] == "float32" and base.config["steps"] == 2
    assert all(t.dtype == torch.float32 for t in file_tensors(result.artifact_dir / ckpt.BASE_GENERATOR_FILE).values()
               if t.is_floating_point())
    assert base.config["sample_rate"] == SR and base.config["hop_length"] == HOP
    assert base.config["training"]["seed"] == cfg.seed and base.config["training"]["trainer"]["max_frames"] == \
        cfg.trainer.max_frames  # the recipe beside the weights
    assert base.model_config["content_dim"] == 16 and base.model_config["n_speakers"] == 2
    assert [s for s, _ in ckpt.list_train_states(result.run_dir)] == [2]
    # TensorBoard: losses, learning rate, grad norms every step; validation mel, images and audio at eval
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.run_dir), size_guidance={"images": 0, "audio": 0}).Reload()
    tags = events.Tags()
    for tag in ("loss/mel", "loss/kl", "loss/feature_matching", "loss/generator_adversarial", "loss/discriminator",
                "lr/generator", "grad_norm/generator", "val/mel"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("loss/mel")] == [1, 2]
    assert "val_mel/0" in tags["images"] and "val_audio/0" in tags["audio"]


@pytest.mark.parametrize("init", ["nearest", "mean"])
def test_finetune_singer_vector_starts_where_singer_init_says_and_the_adapter_records_it(tmp_path, processed,
                                                                                         base_dir, init):
    """nearest: the base speaker vector (or the mean) with the lowest loss on the singer's clips; mean: the
    mean of the base's vectors. With learning rate 0 the exported vector is exactly that start."""
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=tenor", f"base={base_dir}", "trainer.max_steps=1",
                      "trainer.learning_rate=0", f"trainer.singer_init={init}")
    adapter = ckpt.load_adapter(run_training(cfg).artifact_dir)
    start = adapter.config["singer_start"]
    table = ckpt.load_base(base_dir).generator_state["speaker_embedding.weight"].float()
    vector = adapter.tensors["singer_embedding"].float()
    assert start["method"] == init and start["batches"] >= 1 and start["loss"] <= start["mean_loss"]
    if start["from"] == "mean":
        torch.testing.assert_close(vector, table.mean(dim=0))
        assert start["loss"] == start["mean_loss"]
    else:
        assert init == "nearest" and start["from"] in ("speaker alto", "speaker tenor")
        torch.testing.assert_close(vector, table[["alto", "tenor"].index(start["from"].split()[1])])


@pytest.mark.parametrize("rates", [(0.0, 0.05), (1e-3, 0.0)])
def test_singer_learning_rate_drives_the_singer_vector_apart_from_the_adapter_weights(tmp_path, processed, base_dir,
                                                                                      rates):
    """trainer.singer_learning_rate is the singer vector's own rate: with the generator's rate at 0 only the
    vector moves (LoRA's B stays at its zero start); with the vector's rate at 0 only the adapter weights do."""
    generator_rate, singer_rate = rates
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=tenor", f"base={base_dir}", "trainer.max_steps=2",
                      f"trainer.learning_rate={generator_rate}", f"trainer.singer_learning_rate={singer_rate}")
    adapter = ckpt.load_adapter(run_training(cfg).artifact_dir)
    mean = ckpt.load_base(base_dir).generator_state["speaker_embedding.weight"].float().mean(dim=0)
    vector = adapter.tensors["singer_embedding"].float()
    lora_b = [tensor for name, tensor in adapter.tensors.items() if "lora_B" in name]
    assert lora_b
    adapter_moved = any(bool(tensor.abs().sum() > 0) for tensor in lora_b)
    vector_moved = not torch.allclose(vector, mean)
    assert (vector_moved, adapter_moved) == (singer_rate > 0, generator_rate > 0)


def test_singer_learning_rate_must_not_be_negative():
    with pytest.raises(TrainSetupError, match="trainer.singer_learning_rate"):
        validate_config(typed_config(compose_config("train", ["trainer.singer_learning_rate=-1"])))


def test_finetune_keeps_the_singer_voice_print_taken_from_its_train_clips(tmp_path, processed, base_dir,
                                                                           tiny_whisper):
    from ai_singer.voice_print import VOICE_PRINT_FILE, load_voice_print

    result = run_training(make_config(tmp_path, processed, "mode=finetune", "singer=tenor", f"base={base_dir}",
                                      "trainer.max_steps=1", f"voice_print={tiny_whisper[0]}"))
    printed = load_voice_print(result.artifact_dir)
    record = ckpt.load_adapter(result.artifact_dir).config["voice_print"]
    assert printed.clips == 3 and printed.mean.shape == (TINY_WHISPER_D_MODEL,)  # the 3 train clips, not val
    assert record["encoder"] == str(tiny_whisper[0]) and record["frames"] == printed.frames == 3 * 50
    assert record["sha256"] == ckpt.sha256_file(result.artifact_dir / VOICE_PRINT_FILE)


def test_a_singer_whose_clips_give_no_voice_print_is_exported_without_one(tmp_path, processed, base_dir,
                                                                          tiny_whisper, monkeypatch):
    import ai_singer.voice_print as voice_print

    def nothing(*_):
        raise ValueError("no audio of at least 0.1 s to take a voice print from")

    monkeypatch.setattr(voice_print, "compute_voice_print", nothing)
    result = run_training(make_config(tmp_path, processed, "mode=finetune", "singer=tenor", f"base={base_dir}",
                                      "trainer.max_steps=1", f"voice_print={tiny_whisper[0]}"))
    assert "voice_print" not in ckpt.load_adapter(result.artifact_dir).config
    assert voice_print.load_voice_print(result.artifact_dir) is None


def test_a_voice_print_encoder_that_is_not_there_is_refused_before_training(tmp_path, processed, base_dir):
    with pytest.raises(TrainSetupError, match=r"voice_print.*nowhere"):
        validate_config(make_config(tmp_path, processed, "mode=finetune", "singer=tenor", f"base={base_dir}",
                                    f"voice_print={tmp_path / 'nowhere'}"))


def test_singer_init_must_be_known():
    with pytest.raises(TrainSetupError, match="trainer.singer_init"):
        validate_config(typed_config(compose_config("train", ["trainer.singer_init=closest"])))


def test_finetune_exports_a_small_adapter_and_leaves_the_base_alone(tmp_path, processed, base_dir):
    generator_file = base_dir / ckpt.BASE_GENERATOR_FILE
    before_hash = ckpt.sha256_file(generator_file)
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=tenor", f"base={base_dir}", "trainer.max_steps=2")
    result = run_training(cfg)
    assert result.artifact_dir == tmp_path / "singers" / "tenor"
    adapter = ckpt.load_adapter(result.artifact_dir)
    assert adapter.method == "lora" and adapter.base_sha256 == before_hash
    assert adapter.config["base_name"] == base_dir.name and adapter.config["singer"] == "tenor"
    assert adapter.config["steps"] == 2  # the artifact says how long it was trained
    recipe = adapter.config["training"]  # ... and how: seed, the recipe's trainer settings, loss weights, data
    assert recipe["seed"] == cfg.seed and recipe["data"] == str(processed)
    assert recipe["trainer"]["batch_size"] == cfg.trainer.batch_size and "progress" not in recipe["trainer"]
    assert recipe["loss"]["mel"] == cfg.loss.mel
    # the singer's feature-retrieval index: its own content frames (fewer than 1024 here: all of them)
    from ai_singer.retrieval import load_index

    index = load_index(result.artifact_dir)
    info = adapter.config["retrieval_index"]
    assert index.shape == (info["centroids"], 16) and info["dim"] == 16 and info["file"] == "retrieval.safetensors"
    assert info["sha256"] == ckpt.sha256_file(result.artifact_dir / "retrieval.safetensors")
    again = run_training(make_config(tmp_path, processed, "mode=finetune", "singer=tenor", f"base={base_dir}",
                                     "trainer.max_steps=2", "retrieval_centroids=0"))  # finished run: re-export
    assert load_index(again.artifact_dir) is None and ckpt.load_adapter(again.artifact_dir).config["retrieval_index"] is None
    assert adapter.config["stats"]["f0_median_hz"] > 0 and adapter.config["peft"]["r"] == 8
    assert adapter.tensors["singer_embedding"].shape == (16,)
    assert all("lora_" in k for k in adapter.tensors if k != "singer_embedding")
    # small: a fraction of the generator file
    adapter_bytes = (result.artifact_dir / ckpt.ADAPTER_TENSORS_FILE).stat().st_size
    assert adapter_bytes < 0.35 * generator_file.stat().st_size
    # the base file was never rewritten, and the frozen tensors inside the trained model are bit-identical
    assert ckpt.sha256_file(generator_file) == before_hash
    base = ckpt.load_base(base_dir)
    trained = result.models.generator.model
    for name, tensor in trained.state_dict().items():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        if plain in base.generator_state:
            assert torch.equal(tensor, base.generator_state[plain]), name
    # the adapter learned something: LoRA B moved away from zero, the singer vector moved from the mean
    assert any(float(v.abs().sum()) > 0 for k, v in adapter.tensors.items() if "lora_B" in k)
    # the checkpoint holds only the trainable tensors (adapter + singer vector), not the base
    _, state = ckpt.load_latest_train_state(result.run_dir)
    assert set(state["generator"]) == {"singer_embedding"} | {"model." + k for k in adapter.tensors
                                                                if k != "singer_embedding"}


@pytest.mark.parametrize("method", [m for m in PEFT_METHODS if m != "lora"])
def test_every_peft_method_finetunes(tmp_path, processed, base_dir, method):
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={base_dir}", f"peft={method}",
                      "trainer.max_steps=1")
    result = run_training(cfg)
    adapter = ckpt.load_adapter(result.artifact_dir)
    assert adapter.method == method
    n_base = sum(v.numel() for v in ckpt.load_base(base_dir).generator_state.values())
    n_adapter = sum(v.numel() for k, v in adapter.tensors.items() if k != "singer_embedding")
    assert 0 < n_adapter and (n_adapter < 0.5 * n_base) == (method != "full")


@pytest.mark.parametrize("mode", ["frozen", "off"])
def test_finetune_with_a_frozen_or_no_discriminator(tmp_path, processed, base_dir, mode):
    """trainer.discriminator=frozen keeps the base's discriminator as a fixed critic (no discriminator
    step, no optimiser state); off trains on mel + KL alone and needs no discriminator file at all. Both
    resume from a crash to exactly the weights of a straight run."""
    base = base_dir
    if mode == "off":  # an inference-only base (no discriminator.safetensors) is enough
        base = tmp_path / "inference_base"
        shutil.copytree(base_dir, base)
        (base / ckpt.BASE_DISCRIMINATOR_FILE).unlink()
    settings = ["mode=finetune", "singer=alto", f"base={base}", f"trainer.discriminator={mode}",
                "trainer.max_steps=4", "trainer.save_every=2", "trainer.deterministic=true", "trainer.max_frames=20"]
    logged = []
    straight = run_training(make_config(tmp_path / "a", processed, *settings), on_step=lambda s, l: logged.append(l))
    assert "loss/discriminator" not in logged[-1] and "lr/discriminator" not in logged[-1]
    assert ("loss/feature_matching" in logged[-1]) == (mode == "frozen")
    adapter = ckpt.load_adapter(straight.artifact_dir)
    assert any(float(v.abs().sum()) > 0 for k, v in adapter.tensors.items() if "lora_B" in k)
    _, state = ckpt.load_latest_train_state(straight.run_dir)
    assert state["discriminator"] is None and state["optimizer_discriminator"] is None
    assert state["identity"]["discriminator"] == mode
    if mode == "frozen":  # the critic is the base's, untouched
        trained_d = straight.models.discriminator.state_dict()
        base_d = ckpt.load_base(base_dir, with_discriminator=True).discriminator_state
        assert all(torch.equal(trained_d[k], base_d[k]) for k in base_d)
    else:
        assert straight.models.discriminator is None

    def crash(step, losses):
        if step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(make_config(tmp_path / "b", processed, *settings), on_step=crash)
    resumed = run_training(make_config(tmp_path / "b", processed, *settings))
    a, b = final_state(straight.run_dir), final_state(resumed.run_dir)
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])


def test_discriminator_every_n_steps():
    """trainer.discriminator_every=2: the discriminator steps on steps 0, 2, 4, ... only; the generator on every
    step; a value below 1 is refused."""
    from tools.bench_train import make_runner

    runner, batch, _, generator, *_ = make_runner("tiny", "lora", 2, 32, "cpu", "fp32", "train",
                                                  ("trainer.discriminator_every=2",))

    def snapshot(module):
        return [p.detach().clone() for p in module.parameters() if p.requires_grad]

    for step in range(3):
        d_before, g_before = snapshot(runner.discriminator), snapshot(generator)
        runner.train_step(batch, step)
        d_moved = any(not torch.equal(a, b) for a, b in zip(d_before, snapshot(runner.discriminator)))
        assert d_moved == (step % 2 == 0), step
        assert any(not torch.equal(a, b) for a, b in zip(g_before, snapshot(generator))), step
    with pytest.raises(TrainSetupError, match="trainer.discriminator_every"):
        validate_config(typed_config(compose_config("train", ["trainer.discriminator_every=0"])))


def test_discriminator_setting_errors(tmp_path, processed, base_dir):
    with pytest.raises(TrainSetupError, match=r"trainer.discriminator: 'frozen' is for fine-tuning"):
        make_config(tmp_path, processed, "trainer.discriminator=frozen")
    with pytest.raises(TrainSetupError, match=r"trainer.discriminator: must be one of"):
        make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={base_dir}",
                    "trainer.discriminator=fixed")
    with pytest.raises(ckpt.ArtifactMissing, match="no base artifact folder here"):  # not "has no discriminator"
        run_training(make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={tmp_path / 'nowhere'}"))
    # a run cannot switch mid-way: its checkpoint says how the discriminator was handled
    finetune = ["mode=finetune", "singer=alto", f"base={base_dir}"]
    run_training(make_config(tmp_path, processed, *finetune, "trainer.max_steps=1"))
    with pytest.raises(TrainSetupError, match=r"discriminator='train', this run has discriminator='off'"):
        run_training(make_config(tmp_path, processed, *finetune, "trainer.max_steps=2", "trainer.discriminator=off"))


def test_a_ddsp_base_pretrained_without_discriminator_fine_tunes_with_off_only(tmp_path, processed):
    """decoder=ddsp + trainer.discriminator=off: the base has no discriminator file; fine-tuning it with
    train is one clear error that names the fix, and with off, or the default auto, it trains an adapter."""
    result = run_training(make_config(tmp_path / "p", processed, "trainer.max_steps=2", "name=ddspbase",
                                      "model.decoder=ddsp", "model.ddsp_harmonics=16", "model.ddsp_noise_bands=9",
                                      "trainer.discriminator=off"))
    base = result.artifact_dir
    assert not (base / ckpt.BASE_DISCRIMINATOR_FILE).exists()
    assert ckpt.load_base(base).model_config["decoder"] == "ddsp"
    finetune = ["mode=finetune", "singer=alto", f"base={base}", "trainer.max_steps=2"]
    with pytest.raises(TrainSetupError, match=r"pretrained without one; fine-tune it with trainer.discriminator=off"):
        run_training(make_config(tmp_path / "f", processed, *finetune, "trainer.discriminator=train"))
    adapter = run_training(make_config(tmp_path / "g", processed, *finetune, "trainer.discriminator=off"))
    assert ckpt.load_adapter(adapter.artifact_dir).tensors
    config = make_config(tmp_path / "h", processed, *finetune)
    assert config.trainer.discriminator == "auto" and resolve_discriminator(config).trainer.discriminator == "off"
    assert ckpt.load_adapter(run_training(config).artifact_dir).tensors


# ------------------------------------------------------------------------------------ checkpoints

def final_state(run_dir: Path) -> dict:
    step, state = ckpt.load_latest_train_state(run_dir)
    return {"step": step, "generator": state["generator"], "discriminator": state["discriminator"] or {},
            "opt": state["optimizer_generator"]["state"]}


def test_resume_after_a_crash_gives_the_same_weights(tmp_path, processed):
    # 6 clips, batch 2: the crash comes mid-epoch, the resumed run crosses into epoch 2; crops of 20 frames
    settings = ["trainer.max_steps=4", "trainer.save_every=2", "trainer.deterministic=true", "seed=7",
                "trainer.max_frames=20"]
    straight = run_training(make_config(tmp_path / "a", processed, *settings))

    def crash(step, losses):
        if step == 3:
            raise RuntimeError("simulated crash")

    crashed_root = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(make_config(crashed_root, processed, *settings), on_step=crash)
    assert [s for s, _ in ckpt.list_train_states(crashed_root / "runs" / "pretrain-base")] == [2]
    seen = []
    resumed = run_training(make_config(crashed_root, processed, *settings), on_step=lambda s, _: seen.append(s))
    assert seen == [3, 4] and resumed.step == 4
    a, b = final_state(straight.run_dir), final_state(resumed.run_dir)
    assert a["step"] == b["step"] == 4
    for part in ("generator", "discriminator"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    for index in a["opt"]:
        assert torch.equal(a["opt"][index]["exp_avg"], b["opt"][index]["exp_avg"])
    base_a, base_b = straight.artifact_dir / "generator.safetensors", resumed.artifact_dir / "generator.safetensors"
    ta, tb = file_tensors(base_a), file_tensors(base_b)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_dataloader_workers_see_the_same_batches(tmp_path, processed):
    """Persistent workers across epochs (6 clips, batch 2: epoch 2 starts at step 4) give exactly the
    weights of in-process loading: crops depend on (seed, epoch, index) only."""
    settings = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.max_frames=20"]
    in_process = run_training(make_config(tmp_path / "w0", processed, *settings, "trainer.num_workers=0"))
    workers = run_training(make_config(tmp_path / "w2", processed, *settings, "trainer.num_workers=2"))
    a, b = final_state(in_process.run_dir), final_state(workers.run_dir)
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])


def test_retention_and_corrupt_newest_checkpoint_is_skipped(tmp_path, processed):
    settings = ["trainer.save_every=1", "trainer.keep_last=2"]
    first = run_training(make_config(tmp_path, processed, "trainer.max_steps=4", *settings))
    states = ckpt.list_train_states(first.run_dir)
    assert [s for s, _ in states] == [3, 4]
    newest = states[-1][1]
    newest.write_bytes(newest.read_bytes()[:200])  # a torn write
    seen = []
    with pytest.warns(ckpt.CorruptCheckpointWarning, match="step_00000004"):
        second = run_training(make_config(tmp_path, processed, "trainer.max_steps=5", *settings),
                              on_step=lambda s, _: seen.append(s))
    assert seen == [4, 5] and second.step == 5
    assert [s for s, _ in ckpt.list_train_states(second.run_dir)] == [4, 5]


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path, processed):
    def interrupt(step, losses):
        if step == 1:  # a real Ctrl-C: the run finishes this step, saves and returns
            os.kill(os.getpid(), signal.SIGINT)

    cfg = make_config(tmp_path, processed, "trainer.max_steps=3", "trainer.save_every=100")
    handler_before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under `nohup ... &`
    result = run_training(cfg, on_step=interrupt)
    assert result.interrupted and result.step == 1 and result.artifact_dir is None
    assert [s for s, _ in ckpt.list_train_states(result.run_dir)] == [1]
    assert not (tmp_path / "pretrain" / "base").exists()
    finished = run_training(cfg)
    assert finished.step == 3 and (finished.artifact_dir / "generator.safetensors").is_file()
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored


def test_keyboard_interrupt_inside_a_step_also_saves(tmp_path, processed):
    def interrupt(step, losses):
        if step == 2:
            raise KeyboardInterrupt

    result = run_training(make_config(tmp_path, processed, "trainer.max_steps=3", "trainer.save_every=100"),
                          on_step=interrupt)
    assert result.interrupted and [s for s, _ in ckpt.list_train_states(result.run_dir)] == [2]


def test_a_finished_run_only_exports_again(tmp_path, processed):
    cfg = make_config(tmp_path, processed, "trainer.max_steps=1")
    run_training(cfg)
    seen = []
    again = run_training(cfg, on_step=lambda s, _: seen.append(s))
    assert seen == [] and again.step == 1 and again.artifact_dir is not None


# ---------------------------------------------------------------------------------------- errors

def test_no_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found") as info:
        run_training(make_config(tmp_path, tmp_path / "nothing"))
    assert str(tmp_path / "nothing" / "manifest.jsonl") in str(info.value)


def test_singer_without_clips_is_a_clear_error(tmp_path, processed, base_dir):
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=soprano", f"base={base_dir}")
    with pytest.raises(ManifestError, match="'soprano' has no clips"):
        run_training(cfg)


def test_checkpoint_from_another_base_is_refused(tmp_path, processed, base_dir):
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={base_dir}", "trainer.max_steps=1")
    run_training(cfg)
    other = tmp_path / "other_base"
    shutil.copytree(base_dir, other)
    base = ckpt.load_base(other, with_discriminator=True)
    changed = {k: v + 0.01 if k.startswith("decoder.") and v.is_floating_point() else v
               for k, v in base.generator_state.items()}
    ckpt.save_base(other, changed, base.discriminator_state, base.config)
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={other}", "trainer.max_steps=2")
    with pytest.raises(ckpt.AdapterBaseMismatch, match="step_00000001.pt.*adapter/base hash mismatch"):
        run_training(cfg)


def test_resuming_with_the_singer_learning_rate_set_since_is_refused(tmp_path, processed, base_dir):
    run_training(make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={base_dir}",
                             "trainer.max_steps=1"))
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={base_dir}", "trainer.max_steps=2",
                      "trainer.singer_learning_rate=0.01")
    with pytest.raises(TrainSetupError, match=r"step_00000001.pt: .*trainer.singer_learning_rate was set or unset"):
        run_training(cfg)


def test_checkpoint_of_another_model_size_is_refused(tmp_path, processed):
    run_training(make_config(tmp_path, processed, "trainer.max_steps=1"))
    with pytest.raises(TrainSetupError, match=r"step_00000001.pt: the checkpoint's generator weights do not fit"):
        run_training(make_config(tmp_path, processed, "trainer.max_steps=2", "model.gin_channels=8"))


def test_pretrain_init_from_a_base_copies_what_fits_and_records_the_rest(tmp_path, base_dir):
    """Warm start for another content encoder and other singers: the content projection starts fresh (named
    in the base's config), the speaker table is taken by singer name (a new singer starts at the mean of the
    base's vectors), every other tensor starts as the base's."""
    processed8 = write_processed_dataset(tmp_path / "p8", singers=("alto", "bass", "tenor"), sample_rate=SR,
                                         hop_length=HOP, content_dim=8).parent
    cfg = make_config(tmp_path, processed8, "trainer.max_steps=1", "trainer.learning_rate=0", "name=warm",
                      f"init_from={base_dir}")
    result = run_training(cfg)
    old = ckpt.load_base(base_dir, with_discriminator=True)
    new = ckpt.load_base(result.artifact_dir, with_discriminator=True)
    record = new.config["init_from"]
    assert record["name"] == base_dir.name and record["sha256"] == old.sha256
    fresh = set(record["generator_fresh"])
    assert fresh and all(old.generator_state[k].shape != new.generator_state[k].shape for k in fresh if
                         k in old.generator_state)
    assert record["generator_copied"] == len(new.generator_state) - len(fresh)
    assert record["discriminator_fresh"] == [] and record["discriminator_copied"] == len(old.discriminator_state)
    # learning rate 0: the copied tensors are exactly the base's after a step
    table = "speaker_embedding.weight"
    for name, tensor in new.generator_state.items():
        if name not in fresh and name != table:
            torch.testing.assert_close(tensor, old.generator_state[name], msg=name)
    assert old.speakers == ["alto", "tenor"] and new.speakers == ["alto", "bass", "tenor"]
    assert record["speakers_copied"] == 2
    old_rows, new_rows = old.generator_state[table], new.generator_state[table]
    torch.testing.assert_close(new_rows[0], old_rows[0])  # alto
    torch.testing.assert_close(new_rows[2], old_rows[1])  # tenor
    torch.testing.assert_close(new_rows[1], old_rows.mean(dim=0))  # bass: new, the mean


def test_init_from_is_for_pretraining_and_must_be_a_base(tmp_path, processed, base_dir):
    with pytest.raises(TrainSetupError, match=r"init_from: is for mode=pretrain"):
        make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={base_dir}", f"init_from={base_dir}")
    with pytest.raises(TrainSetupError, match=r"init_from: .*nowhere"):
        run_training(make_config(tmp_path, processed, "trainer.max_steps=1", f"init_from={tmp_path}/nowhere"))


def test_content_dim_that_differs_from_the_base_is_refused(tmp_path, base_dir):
    processed8 = write_processed_dataset(tmp_path / "p8", singers=("alto",), sample_rate=SR, hop_length=HOP,
                                         content_dim=8).parent
    cfg = make_config(tmp_path, processed8, "mode=finetune", "singer=alto", f"base={base_dir}")
    with pytest.raises(TrainSetupError, match=r"stats.json: content dim mismatch.*8-dim.*expects 16"):
        run_training(cfg)


def test_content_encoder_settings_that_differ_from_the_base_are_refused(tmp_path, base_dir):
    """Same dim but another layer (or name, or final_proj) is another feature space: a clear error."""
    for option, value, shown in (("encoder_layer", 9, "layer 2 vs 9"), ("encoder_name", "contentvec",
                                                                        "name 'tiny-hubert' vs 'contentvec'"),
                                 ("encoder_final_proj", True, "final_proj False vs True")):
        other = write_processed_dataset(tmp_path / option, singers=("alto",), sample_rate=SR, hop_length=HOP,
                                        **{option: value}).parent
        cfg = make_config(tmp_path, other, "mode=finetune", "singer=alto", f"base={base_dir}")
        with pytest.raises(TrainSetupError, match=rf"stats.json: content encoder mismatch with the base .*{shown}"):
            run_training(cfg)


def test_fp16_base_fine_tunes_on_a_dataset_with_only_name_and_dim_recorded(tmp_path, processed):
    """export_dtype=float16 halves the base; fine-tuning loads it into float32 modules. A dataset written
    before the full encoder record (name and dim only) is accepted (unknown is not a mismatch)."""
    full = run_training(make_config(tmp_path / "a", processed, "trainer.max_steps=1", "name=b32"))
    half = ckpt.convert_base_dtype(full.artifact_dir, tmp_path / "b16", "float16")
    stored = file_tensors(half / ckpt.BASE_GENERATOR_FILE)
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    size16 = (half / ckpt.BASE_GENERATOR_FILE).stat().st_size
    assert size16 < 0.55 * (full.artifact_dir / ckpt.BASE_GENERATOR_FILE).stat().st_size
    legacy = write_processed_dataset(tmp_path / "legacy", singers=("alto",), sample_rate=SR, hop_length=HOP,
                                     encoder_path=None, encoder_layer=None, encoder_final_proj=None).parent
    result = run_training(make_config(tmp_path / "a", legacy, "mode=finetune", "singer=alto", f"base={half}",
                                      "trainer.max_steps=1"))
    adapter = ckpt.load_adapter(result.artifact_dir)
    assert adapter.base_sha256 == ckpt.load_base(half).sha256
    assert all(t.dtype == torch.float32 for t in adapter.tensors.values())


def test_pretrain_export_dtype(tmp_path, processed):
    result = run_training(make_config(tmp_path, processed, "trainer.max_steps=1", "export_dtype=bfloat16"))
    base = ckpt.load_base(result.artifact_dir, with_discriminator=True)
    assert base.config["weights_dtype"] == "bfloat16"
    for name in (ckpt.BASE_GENERATOR_FILE, ckpt.BASE_DISCRIMINATOR_FILE):
        assert {t.dtype for t in file_tensors(result.artifact_dir / name).values()
                if t.is_floating_point()} == {torch.bfloat16}, name
    assert all(t.dtype == torch.float32 for t in base.generator_state.values() if t.is_floating_point())
    with pytest.raises(TrainSetupError, match="export_dtype"):
        make_config(tmp_path, processed, "export_dtype=float64")


def test_sample_rate_or_hop_mismatch_is_refused(tmp_path, base_dir):
    at_22k = write_processed_dataset(tmp_path / "p22", singers=("alto",), sample_rate=22050, hop_length=HOP).parent
    with pytest.raises(TrainSetupError, match="sample rate mismatch: the processed dataset is 22050 Hz"):
        run_training(make_config(tmp_path, at_22k))
    with pytest.raises(TrainSetupError, match="sample rate mismatch"):
        run_training(make_config(tmp_path, at_22k, "mode=finetune", "singer=alto", f"base={base_dir}"))
    hop256 = write_processed_dataset(tmp_path / "h256", singers=("alto",), sample_rate=SR, hop_length=256).parent
    with pytest.raises(TrainSetupError, match="hop length mismatch: the processed dataset uses hop 256"):
        run_training(make_config(tmp_path, hop256))


def test_config_typos_are_errors(tmp_path, processed):
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        with pytest.raises(ConfigCompositionException, match="max_stepz"):
            compose("train", overrides=overrides_for(tmp_path, processed) + ["trainer.max_stepz=3"])
        cfg = compose("train", overrides=overrides_for(tmp_path, processed))
    OmegaConf.set_struct(cfg, False)
    cfg.loss.mell = 45.0  # e.g. a typo in a user's own conf/loss/*.yaml
    with pytest.raises(TrainSetupError, match="mell"):
        typed_config(cfg)
    cfg = OmegaConf.merge(cfg, {"loss": {}})
    del cfg.loss["mell"]
    cfg.trainer.precision = "fp8"
    with pytest.raises(TrainSetupError, match="trainer.precision"):
        typed_config(cfg)
    with pytest.raises(TrainSetupError, match="needs singer"):
        make_config(tmp_path, processed, "mode=finetune")


def test_command_line_reports_errors_with_exit_code_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "ai_singer.train", f"paths.processed={tmp_path}/none",
                           f"paths.runs={tmp_path}/runs"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert f"train: error: {tmp_path}/none/manifest.jsonl: manifest not found" in done.stderr


def test_an_interrupted_run_exits_130_so_a_following_command_does_not_run(tmp_path, processed, monkeypatch):
    import ai_singer.train as train_module

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("train", overrides=overrides_for(tmp_path, processed))
    monkeypatch.setattr(train_module, "run_training",
                        lambda typed: train_module.TrainResult(run_dir=tmp_path / "runs" / "r", artifact_dir=None,
                                                               step=3, interrupted=True))
    assert train_module.run_cli(cfg) == 130


def test_a_killed_checkpoint_save_is_cleaned_up_by_the_next_run(tmp_path, processed):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / "runs" / "pretrain-base" / "checkpoints" / f".step_00000001.{int(dead.stdout)}.q1w2e3r4.tmp.pt"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a checkpoint")
    run_training(make_config(tmp_path, processed, "trainer.max_steps=1"))
    assert not leftover.exists()
    assert [s for s, _ in ckpt.list_train_states(tmp_path / "runs" / "pretrain-base")] == [1]


def test_settings_have_no_defaults_and_a_value_missing_from_conf_is_an_error(tmp_path):
    for cls in (TrainerSettings, LossWeights, PathsSettings, AudioSettings):
        with pytest.raises(TypeError):
            cls()
    typed = load_settings("train")  # conf/ is the one source
    conf = Path(conf_dir())
    for settings, path in ((typed.trainer, "trainer/default.yaml"), (typed.loss, "loss/default.yaml"),
                           (typed.paths, "paths/default.yaml"), (typed.audio, "audio/44k.yaml")):
        assert yaml.safe_load((conf / path).read_text()) == dataclasses.asdict(settings), path
    with pytest.raises(TrainSetupError, match="trainer.max_steps"):
        typed_config(compose_config("train", ["~trainer.max_steps"]))


# ------------------------------------------------------------------------------------------ slow

@pytest.mark.slow
def test_prior_mel_trains_the_conversion_path_too_and_is_logged(tmp_path, processed, base_dir):
    logged = []
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={base_dir}", "loss.prior_mel=45",
                      "trainer.max_steps=2", "trainer.discriminator=off")
    run_training(cfg, on_step=lambda s, losses: logged.append(losses))
    assert all(losses["loss/prior_mel"] > 0 for losses in logged)
    off = []
    run_training(make_config(tmp_path / "off", processed, "mode=finetune", "singer=alto", f"base={base_dir}",
                             "trainer.max_steps=1", "trainer.discriminator=off"), on_step=lambda s, l: off.append(l))
    assert "loss/prior_mel" not in off[-1]  # the default (0) costs nothing
    with pytest.raises(TrainSetupError, match=r"loss.prior_mel: must be >= 0"):
        validate_config(make_config(tmp_path, processed, "loss.prior_mel=-1"))


def test_stft_loss_is_added_and_logged_when_weighted_and_bad_resolutions_are_refused(tmp_path, processed, base_dir):
    logged = []
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={base_dir}", "loss.stft=10",
                      "trainer.max_steps=1", "trainer.discriminator=off")
    run_training(cfg, on_step=lambda s, losses: logged.append(losses))
    assert logged[-1]["loss/stft"] > 0
    assert logged[-1]["loss/generator_total"] > 45 * logged[-1]["loss/mel"] + 10 * logged[-1]["loss/stft"] - 1e-3
    with pytest.raises(TrainSetupError, match=r"loss.stft_resolutions: needs \[n_fft, hop\] pairs"):
        validate_config(make_config(tmp_path, processed, "loss.stft=1", "loss.stft_resolutions=[[256,512]]"))
    with pytest.raises(TrainSetupError, match=r"loss.stft: must be >= 0"):
        validate_config(make_config(tmp_path, processed, "loss.stft=-1"))


def test_mel_loss_goes_down_when_overfitting_one_clip(tmp_path):
    one = write_processed_dataset(tmp_path / "one", singers=("alto",), train_clips=1, val_clips=0,
                                  sample_rate=SR, hop_length=HOP).parent
    mel = []
    cfg = make_config(tmp_path, one, "trainer.max_steps=150", "trainer.save_every=1000", "trainer.batch_size=1",
                      "trainer.learning_rate=1e-3", "model.segment_frames=16")
    run_training(cfg, on_step=lambda s, losses: mel.append(losses["loss/mel"]))
    first, last = sum(mel[:10]) / 10, sum(mel[-10:]) / 10
    print(f"mel L1 first 10 steps {first:.3f}, last 10 steps {last:.3f}")
    assert last < 0.8 * first, (first, last)


@pytest.mark.parametrize("mode", ["finetune", pytest.param("pretrain", marks=pytest.mark.slow),
                                  pytest.param("finetune-frozen", marks=pytest.mark.slow)])
def test_torchrun_two_processes_on_cpu(tmp_path, processed, base_dir, mode):
    """The unchanged entry point under torchrun (DDP with gloo); only rank 0 writes. About 15 s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    settings = ["name=ddp"] if mode == "pretrain" else ["mode=finetune", "singer=alto", f"base={base_dir}"]
    if mode == "finetune-frozen":  # the frozen critic is not wrapped in DDP (nothing to synchronise)
        settings.append("trainer.discriminator=frozen")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "ai_singer.train", *overrides_for(tmp_path, processed), "trainer.max_steps=2",
               "trainer.device=cpu", *settings]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "world size 2" in done.stderr + done.stdout
    if mode == "pretrain":
        assert (tmp_path / "pretrain" / "ddp" / "generator.safetensors").is_file()
        run_dir = tmp_path / "runs" / "pretrain-ddp"
    else:
        assert ckpt.load_adapter(tmp_path / "singers" / "alto").method == "lora"
        run_dir = tmp_path / "runs" / "alto"
    assert [s for s, _ in ckpt.list_train_states(run_dir)] == [2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_gpu_the_machine_lacks_is_a_clear_error(tmp_path, processed):
    with pytest.raises(TrainSetupError, match=r"trainer.device='cuda': this machine has no CUDA GPU"):
        run_training(make_config(tmp_path, processed, "trainer.device=cuda", "trainer.max_steps=1"))


def test_content_loss_is_added_and_logged_when_weighted(tmp_path, processed, base_dir, tiny_whisper):
    logged = []
    cfg = make_config(tmp_path, processed, "mode=finetune", "singer=alto", f"base={base_dir}", "loss.content=5",
                      f"loss.content_encoder={tiny_whisper[0]}", "trainer.max_steps=1", "trainer.discriminator=off")
    run_training(cfg, on_step=lambda s, losses: logged.append(losses))
    assert logged[-1]["loss/content"] > 0
    assert logged[-1]["loss/generator_total"] > 45 * logged[-1]["loss/mel"] + 5 * logged[-1]["loss/content"] - 1e-3
    with pytest.raises(TrainSetupError, match=r"loss.content: must be >= 0"):
        validate_config(make_config(tmp_path, processed, "loss.content=-1"))
    with pytest.raises(TrainSetupError, match=r"loss.content_encoder: .*nowhere has no model.bin — give a "
                                              r"faster-whisper"):
        validate_config(make_config(tmp_path, processed, "loss.content=1", f"loss.content_encoder={tmp_path}/nowhere"))
