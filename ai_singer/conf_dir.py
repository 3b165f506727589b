"""Where the Hydra configs live: ``conf/`` of the bundle (inside an installed wheel, or the checkout's
top-level ``conf/`` for an editable install; see :mod:`ai_singer.bundle`).

Only entry points (``python -m ai_singer.preprocess|train|infer``) and tests import this.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ai_singer.bundle import bundle_root

#: The environment variable that points ai_singer at another config folder (a copy of ``conf/``).
CONF_ENV = "AI_SINGER_CONF"


def _default_conf_dir() -> Path:
    root = bundle_root()
    return Path(os.environ[CONF_ENV]) if os.environ.get(CONF_ENV) else \
        (root / "conf" if root is not None else Path(__file__).resolve().parent / "_bundle" / "conf")


#: ``AI_SINGER_CONF`` overrides the location.
CONF_DIR: Path = _default_conf_dir()


def conf_dir() -> str:
    """Absolute path of the config folder, with a clear error if it is missing."""
    if not (CONF_DIR / "preprocess.yaml").is_file():
        raise FileNotFoundError(
            f"ai_singer's config folder was not found at {CONF_DIR} (no preprocess.yaml there). Install a wheel "
            f"built from the repository (`pip install .`; it carries conf/), or an editable checkout "
            f"(`pip install -e .`), or point {CONF_ENV} at a copy of the repository's conf/ folder."
        )
    return str(CONF_DIR)


#: The command name each config's errors are reported under (``ai-singer convert`` runs ``infer``).
STAGE_NAMES = {"infer": "convert", "extract": "extract-adapter"}


def output_folders(config_name: str, cfg: Any) -> list[tuple[str, str]]:
    """The folders (setting, path) a stage writes to, Hydra's log folder included (it lives inside them)."""
    if config_name == "extract":
        return [("out", str(cfg.out))]
    if config_name == "export":
        return [("out", str(cfg.out))] if cfg.get("out") else []
    paths = cfg.paths
    if config_name == "infer":
        return [("paths.output", str(paths.output))]
    if config_name == "preprocess":
        return [("paths.processed", str(paths.processed))]
    if config_name == "train":
        artifact = ("paths.pretrain", str(paths.pretrain)) if cfg.get("mode") == "pretrain" else \
            ("paths.singers", str(paths.singers))
        return [("paths.runs", str(paths.runs)), artifact]
    return []


def check_writable(setting: str, folder: str | os.PathLike) -> None:
    """Raise UserError unless ``folder`` is a folder this process can write in, or can be created (its
    nearest existing ancestor is a writable folder). Probed by creating and deleting a file, so read-only
    mounts and permissions are both seen; nothing is created when the folder does not exist yet."""
    import tempfile

    from ai_singer.errors import UserError

    target = Path(folder).expanduser()
    probe = target.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    where = f"{setting}={folder}"
    fix = f"choose a writable folder with {setting}=DIR"
    if not probe.is_dir():
        raise UserError(where, f"cannot be created: {probe} is a file, not a folder", fix)
    try:
        fd, name = tempfile.mkstemp(prefix=".ai_singer-write-test.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        what = "is not writable" if probe == target.absolute() else f"cannot be created: {probe} is not writable"
        raise UserError(where, f"{what} ({error.strerror or error})", fix) from None


def _settings_named(config_name: str, leaf: str) -> list[str]:
    """Full keys of ``conf/<config_name>.yaml`` (defaults composed) whose last part is ``leaf``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig

    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name=config_name):
            cfg = compose(config_name)
    except Exception:  # noqa: BLE001 - only a hint
        return []
    found = []

    def walk(node: Any, prefix: str) -> None:
        for key in node.keys():
            full = f"{prefix}{key}"
            value = node._get_node(key)
            if isinstance(value, DictConfig):
                walk(value, f"{full}.")
            elif str(key) == leaf:
                found.append(full)

    walk(cfg, "")
    return found


def _compose_for_checks(config_name: str, argv: list[str]) -> Any:
    """The config the command line asks for, composed without running anything; None when options other than
    overrides are given (``--help``, ``--cfg``, ``-m``: left to Hydra) or it does not compose (Hydra reports)."""
    if any(arg.startswith("-") for arg in argv):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ai_singer.errors import UserError

    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name=config_name):
            return compose(config_name, overrides=list(argv))
    except (HydraException, OmegaConfBaseException) as error:  # an override that is not in the config, bad syntax
        lines = [line.strip() for line in str(error).splitlines()
                 if line.strip() and not line.strip().startswith(("full_key:", "object_type=", "reference_type="))]
        fix = f"`python -m ai_singer.{config_name} --cfg job` prints every setting"
        unknown = re.match(r"Could not override '([^']+)'", lines[0]) if lines else None
        if unknown:
            key = unknown.group(1)
            near = _settings_named(config_name, key.rsplit(".", 1)[-1])
            reason = f"{key} is not a setting of {STAGE_NAMES.get(config_name, config_name)}"
            if near:
                fix = f"did you mean {' or '.join(near)}? ({fix})"
            raise UserError("command line", reason, fix) from None
        raise UserError("command line", " ".join(lines) or type(error).__name__, fix) from None
    except Exception:  # noqa: BLE001 - anything else (GlobalHydra in use...): Hydra reports when the app runs
        return None


#: Exit code of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT = 130


def run_hydra_app(config_name: str, run_cli, stage: str | None = None) -> None:
    """Run ``run_cli(cfg) -> exit code`` as a Hydra app over ``conf/<config_name>.yaml`` (the command line
    supplies the overrides) and exit with its code when it is non-zero. The one Hydra entry point of
    ``python -m ai_singer.preprocess|train|infer``.

    A user's mistake (:class:`ai_singer.errors.UserError`, raised anywhere in the stage) ends the run here:
    one line on stderr, ``<stage>: error: <message>``, exit code 2; a full disk
    (:class:`ai_singer.errors.OutOfSpace`, or ENOSPC from anywhere) likewise with exit code 3. The stage's output folders are checked
    for writability first, before Hydra creates its log folder inside them (same one line, exit 2). A Ctrl-C
    that reaches here (preprocess, convert; train saves and returns 130 itself) is one line too, exit 130."""
    import sys

    import hydra

    from ai_singer.errors import ENVIRONMENT_EXIT, OutOfSpace, is_out_of_space, is_user_error, report

    stage = stage or STAGE_NAMES.get(config_name, config_name)
    try:
        composed = _compose_for_checks(config_name, sys.argv[1:])
    except Exception as error:  # noqa: BLE001 - a user's mistake is one line; anything else: Hydra reports
        if is_user_error(error):
            sys.exit(report(stage, error))
        composed = None
    if composed is not None:
        try:
            for setting, folder in output_folders(config_name, composed):
                check_writable(setting, folder)
        except Exception as error:  # noqa: BLE001 - anything else (a config that does not resolve): Hydra reports
            if is_user_error(error):
                sys.exit(report(stage, error))

    @hydra.main(config_path=conf_dir(), config_name=config_name, version_base="1.3")
    def _entry(cfg) -> None:
        try:
            code = run_cli(cfg)
        except KeyboardInterrupt:  # Ctrl-C: what was finished is kept (atomic writes); non-zero, so `a && b` stops
            print(f"{stage}: interrupted; what was finished is kept: run the same command again to resume",
                  file=sys.stderr)
            code = INTERRUPTED_EXIT
        except Exception as error:  # noqa: BLE001 - anything else keeps its traceback
            if is_out_of_space(error):  # the environment, not the input: one line too, its own exit code
                if not isinstance(error, OutOfSpace):
                    where = getattr(error, "filename", None)
                    error = OutOfSpace(os.path.dirname(str(where)) if where else os.getcwd())
                report(stage, error)
                code = ENVIRONMENT_EXIT
            elif is_user_error(error):
                code = report(stage, error)
            else:
                raise
        if code:
            sys.exit(code)

    _entry()
