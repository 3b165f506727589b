"""conf/ is the one place the defaults live: the settings classes have none, the stages and
ai_singer.config.load_settings build them from the composed config, and the numbers are not restated in code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ai_singer.config import compose, conf_file, conf_group, load_settings

PACKAGE = Path(__file__).resolve().parent.parent / "ai_singer"


def _settings_classes():
    from ai_singer.adapters import PeftSettings
    from ai_singer.audio import SliceConfig
    from ai_singer.infer import ChunkSettings, ConvertSettings, PitchCorrectionSettings
    from ai_singer.features.f0_settings import F0Settings  # preprocess's and conversion's f0 settings
    from ai_singer.mix import LimiterSettings, MixSettings
    from ai_singer.model import SingerVAEConfig
    from ai_singer.preprocess_settings import LoudnessSettings, PreprocessSettings, SplitSettings
    from ai_singer.train_settings import AudioSettings, LossWeights, PathsSettings, TrainConfig, TrainerSettings

    return [PeftSettings, SliceConfig, ChunkSettings, ConvertSettings, PitchCorrectionSettings,
            LimiterSettings, MixSettings, SingerVAEConfig, F0Settings, LoudnessSettings, PreprocessSettings,
            SplitSettings, AudioSettings, LossWeights, PathsSettings, TrainConfig, TrainerSettings]


@pytest.mark.parametrize("settings_class", _settings_classes(), ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_a_settings_class_has_no_defaults_of_its_own(settings_class):
    with pytest.raises(TypeError, match="missing"):
        settings_class()


def test_the_f0_ceiling_is_written_in_conf_only():
    """The number the review found in six places (f0_max): in conf/ now, and in no module of the package."""
    f0_max = conf_group("f0")["f0_max"]
    number = re.compile(rf"(?<![\d.]){int(f0_max)}(\.0*)?(?![\d.])")
    assert number.search((PACKAGE.parent / "conf" / "f0" / "default.yaml").read_text(encoding="utf-8"))
    written = [f"{path.relative_to(PACKAGE.parent)}:{line_number}"
               for path in sorted(PACKAGE.rglob("*.py"))
               for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               if number.search(line)]
    assert written == []


def test_each_stage_builds_its_settings_from_the_composed_config():
    preprocess = load_settings("preprocess", ["f0.method=dio"])
    assert preprocess.f0.method == "dio" and preprocess.f0.f0_max == conf_group("f0")["f0_max"]
    assert preprocess.slicer.threshold_db == conf_group("slicer")["threshold_db"]
    infer = load_settings("infer", ["noise_scale=0"])
    assert infer.noise_scale == 0.0 and infer.chunk.batch_size == conf_file("infer")["chunk"]["batch_size"]
    assert infer.f0.f0_max == conf_group("f0")["f0_max"]
    train = load_settings("train", ["trainer=tiny"])
    composed = compose("train", ["trainer=tiny"])
    assert train.trainer.max_steps == composed.trainer.max_steps and train.model.f0_max == composed.model.f0_max
    with pytest.raises(ValueError, match="no settings"):
        load_settings("concat")


def test_a_value_missing_from_conf_is_an_error_not_a_fallback():
    from ai_singer.errors import UserError

    for stage, override in (("preprocess", "~slicer.hop_s"), ("infer", "~f0.f0_max"), ("train", "~loss.mel")):
        with pytest.raises(UserError):
            load_settings(stage, [override])
