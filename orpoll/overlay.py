"""The admin's edits over the environment's settings: one edit made into new Settings, and the
stored edits laid over the environment's at start. Settings are never changed in place."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from .config import ENV_FIELDS, FIELDS, Settings
from .values import ConfigError, parse_value

log = logging.getLogger("orpoll")


def replace_settings(current: Settings, changes: Mapping[str, Any]) -> Settings:
    """New Settings with editable fields changed (keys are env names or field names)."""
    values = {}
    for name, raw in changes.items():
        f = ENV_FIELDS.get(name) or FIELDS.get(name)
        if f is None or not f.metadata["editable"]:
            raise ConfigError(f"{name}: not an editable setting")
        values[f.name] = parse_value(f, raw)
    return dataclasses.replace(current, **values)


def overlay_settings(config: Settings, stored: dict[str, str]) -> Settings:
    """``config`` with the admin's stored edits applied (a value no longer valid is skipped)."""
    for name, value in stored.items():
        try:
            config = replace_settings(config, {name: value})
        except ConfigError as e:
            log.error("ignoring a stored setting (the environment's value is used): %s", e)
    return config
