"""Setting values: the text of an environment variable, a flag or an admin form made into the
typed value its field declares, within its bounds; ConfigError names the variable."""

from __future__ import annotations

import dataclasses
import math
import os
import urllib.parse
from typing import Any

TYPES = {"int": int, "float": float, "bool": bool, "str": str}
BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


class ConfigError(ValueError):
    """A setting has a value it cannot take; the message names the variable."""


def parse_value(f: dataclasses.Field[Any], raw: Any) -> Any:
    """Convert and check one value for field ``f``; raises ConfigError naming the variable."""
    env, meta = f.metadata["env"], f.metadata
    kind = f.type if isinstance(f.type, type) else TYPES.get(f.type, str)
    if kind is bool:
        text = str(raw).strip().lower()
        if text not in BOOLS:
            raise ConfigError(f"{env}={raw!r}: expected true or false")
        return BOOLS[text]
    if kind in (int, float):
        return parse_number(f, kind, raw)
    value = str(raw).strip() if isinstance(raw, str | int | float) else raw
    if not isinstance(value, str):
        raise ConfigError(f"{env}={raw!r}: expected a string")
    if meta.get("file") and value and not os.path.isfile(value):
        raise ConfigError(f"{env}={raw!r}: no such file")
    if meta.get("url") and value:
        check_url(env, value)
    if "choices" in meta:
        value = value.lower()
        if value not in meta["choices"]:
            raise ConfigError(f"{env}={raw!r}: expected one of {', '.join(meta['choices'])}")
    return value


def parse_number(f: dataclasses.Field[Any], kind: type, raw: Any) -> int | float:
    """A finite number within the field's ``min`` and ``max``: a stored or edited value can
    never be one that breaks a timer, a cookie's expiry or a timeout (1e300, inf, NaN)."""
    env, low, high = f.metadata["env"], f.metadata["min"], f.metadata["max"]
    expected = "an integer" if kind is int else "a number"
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ConfigError(f"{env}={raw!r}: expected {expected}")
    number = raw
    try:
        if isinstance(raw, str):  # an integer setting takes digits only ("1e3" is refused)
            number = int(raw.strip()) if kind is int else float(raw.strip())
        value = float(number)
    except (ValueError, OverflowError):
        raise ConfigError(f"{env}={raw!r}: expected {expected}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{env}={raw!r}: must be >= {low} and <= {high}")
    if kind is int:
        if value != int(value):
            raise ConfigError(f"{env}={raw!r}: expected {expected}")
        return int(value)
    return value


def check_url(env: str, value: str) -> None:
    """An http(s) URL with a host (PUBLIC_URL)."""
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{env}={value!r}: expected a URL such as https://orpoll.example.com")
