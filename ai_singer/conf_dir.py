"""Where the Hydra configs live: the repository's top-level ``conf/`` folder.

Only entry points (``python -m ai_singer.preprocess|train|infer``) and tests import this.
"""
from __future__ import annotations

import os
from pathlib import Path

#: ``AI_SINGER_CONF`` overrides the location (e.g. for a non-editable install).
CONF_DIR: Path = Path(os.environ.get("AI_SINGER_CONF", Path(__file__).resolve().parent.parent / "conf"))


def conf_dir() -> str:
    """Absolute path of the config folder, with a clear error if it is missing."""
    if not (CONF_DIR / "preprocess.yaml").exists() and not CONF_DIR.is_dir():
        raise FileNotFoundError(
            f"ai_singer's config folder was not found at {CONF_DIR}. Install from a checkout with "
            "`pip install -e .` or point AI_SINGER_CONF at a copy of the repository's conf/ folder."
        )
    return str(CONF_DIR)


def run_hydra_app(config_name: str, run_cli) -> None:
    """Run ``run_cli(cfg) -> exit code`` as a Hydra app over ``conf/<config_name>.yaml`` (the command line
    supplies the overrides) and exit with its code when it is non-zero. The one Hydra entry point of
    ``python -m ai_singer.preprocess|train|infer``."""
    import sys

    import hydra

    @hydra.main(config_path=conf_dir(), config_name=config_name, version_base="1.3")
    def _entry(cfg) -> None:
        code = run_cli(cfg)
        if code:
            sys.exit(code)

    _entry()
