"""The command line: a flag for every setting, generated from the settings table in config.py
(``--port 9001`` is PORT=9001; a flag wins over the environment), and the start-up checks that
end the process with one line and an exit code (``StartupError``) instead of a traceback."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from . import __version__
from .config import ENV_FIELDS, Settings, load_settings
from .values import ConfigError, parse_value

EXIT_CONFIG = 2  # a bad flag or setting, an unusable DATA_DIR or database (as argparse's usage)
EXIT_LISTEN = 3  # the address cannot be listened on: the port is taken, or HOST is not ours


class StartupError(Exception):
    """The process cannot start; ``str()`` is the one line to print, ``code`` the exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


def flag_of(env: str) -> str:
    """The flag of an environment variable: LOG_LEVEL -> --log-level."""
    return "--" + env.lower().replace("_", "-")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python run.py",
        usage="%(prog)s [--SETTING VALUE ...]  (--help lists them)",
        description="orpoll: one OpenAI-compatible endpoint over a pool of OpenRouter keys.",
        epilog="Each flag can be given instead as its environment variable (or in .env); a "
        "flag wins over the environment. Flags are visible to other users of the machine "
        "(ps): give secrets in the environment.",
    )
    p.add_argument("--version", action="version", version=f"orpoll {__version__}")
    for env, f in ENV_FIELDS.items():
        meta, default = f.metadata, "(empty)" if f.default == "" else f.default
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if f.type in (bool, "bool") else {}
        p.add_argument(
            flag_of(env),
            dest=env,
            metavar="VALUE",
            help=f"{meta['help']} [env {env}, default: {default}]".replace("%", "%%"),
            **extra,
        )
    return p


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings from the flags in ``argv`` over ``environ``. An unknown flag or ``--help``
    exits here (argparse: 2 with the usage, or 0); a bad value raises ConfigError."""
    given = {env: raw for env, raw in vars(parser().parse_args(argv)).items() if raw is not None}
    overrides = {}
    for env, raw in given.items():
        f = ENV_FIELDS[env]
        try:
            overrides[f.name] = parse_value(f, raw)
        except ConfigError as e:
            raise ConfigError(f"{flag_of(env)}: {e}") from None
    rest = {k: v for k, v in environ.items() if k not in given}
    return load_settings(rest, **overrides)


def check_data_dir(path: str) -> None:
    """DATA_DIR exists (made if missing), is a directory, and this process can write in it;
    StartupError saying which is not so."""
    where = f"storage error: cannot use DATA_DIR {path}"
    hint = (
        f"it must be a directory writable by uid {os.getuid()} "
        "(in Docker, chown the mounted directory to the container's user)"
    )
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise StartupError(f"{where}: it is a file, not a directory") from None
    except OSError as e:
        raise StartupError(f"{where}: {e.strerror}; {hint}") from None
    if not os.path.isdir(path):
        raise StartupError(f"{where}: it is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StartupError(f"{where}: not writable ({e.strerror}); {hint}") from None
