"""The one path from ``conf/`` to typed settings, for code that is not a Hydra entry point.

Every default lives in ``conf/`` (``conf/f0/default.yaml`` holds the F0 search range, and so on); the
settings dataclasses have no defaults of their own for what the YAML holds, so a value missing from
``conf/`` is an error, never a silent fallback. The stages build their settings from the config Hydra
composed (``preprocess_settings.settings_from_config``, ``infer.settings_from_config``,
``train_settings.typed_config``); tests, tools and the demo use the same builders through
:func:`load_settings`::

    settings = load_settings("preprocess", overrides=["f0.method=dio"])
    f0 = conf_group("f0")          # {'method': 'harvest', 'f0_min': 50.0, 'f0_max': ...}
    mix = conf_file("infer")["mix"]
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

#: The stage configs and the builder of each one's typed settings (module, function).
BUILDERS = {
    "preprocess": ("ai_singer.preprocess_settings", "settings_from_config"),
    "infer": ("ai_singer.infer", "settings_from_config"),
    "train": ("ai_singer.train_settings", "typed_config"),
    "extract": ("ai_singer.extract", "settings_from_config"),
}


def compose(config_name: str, overrides: Sequence[str] = ()) -> Any:
    """``conf/<config_name>.yaml`` composed by Hydra with ``overrides`` (command-line syntax), as a DictConfig.

    Usable inside a running Hydra app too: the global Hydra state is saved and restored around it."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ai_singer.conf_dir import conf_dir

    saved = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name=config_name):
            return hydra_compose(config_name, overrides=list(overrides))
    finally:
        if saved is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(saved)


def load_settings(config_name: str, overrides: Sequence[str] = ()) -> Any:
    """The typed settings of a stage (``preprocess`` -> PreprocessSettings, ``infer`` -> ConvertSettings,
    ``train`` -> TrainConfig), built from ``conf/`` by the stage's own builder, exactly as the stage does."""
    import importlib

    if config_name not in BUILDERS:
        raise ValueError(f"no settings for {config_name!r}; one of {sorted(BUILDERS)}")
    module, function = BUILDERS[config_name]
    return getattr(importlib.import_module(module), function)(compose(config_name, overrides))


def conf_group(group: str, option: str = "default") -> dict[str, Any]:
    """One config group's file, ``conf/<group>/<option>.yaml``, as a plain dict (read without Hydra; for
    library code that needs a default of the config, e.g. the F0 search range of the metrics)."""
    import copy

    return copy.deepcopy(_read_group(group, option))


def conf_file(config_name: str) -> dict[str, Any]:
    """A stage's own values, ``conf/<config_name>.yaml`` without its ``defaults`` list and ``hydra`` section
    (its groups not composed in), as a plain dict: e.g. ``conf_file("infer")["mix"]``."""
    import copy

    return copy.deepcopy(_read_file(config_name))


@lru_cache(maxsize=None)
def _read_file(config_name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from ai_singer.conf_dir import conf_dir

    values = OmegaConf.to_container(OmegaConf.load(Path(conf_dir()) / f"{config_name}.yaml"), resolve=False)
    assert isinstance(values, dict)
    return {key: value for key, value in values.items() if key not in ("defaults", "hydra")}


@lru_cache(maxsize=None)
def _read_group(group: str, option: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from ai_singer.conf_dir import conf_dir

    path = Path(conf_dir()) / group / f"{option}.yaml"
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(values, dict) or "defaults" in values:
        raise ValueError(f"{path}: expected a plain config group file")
    return values
