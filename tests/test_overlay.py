"""overlay.py: an admin edit makes new Settings (only editable ones, validated), and stored edits
lie over the environment's settings at start; one no longer valid is skipped, with a log line."""

from __future__ import annotations

import logging

import pytest

from orpoll.config import load_settings
from orpoll.overlay import overlay_settings, replace_settings
from orpoll.values import ConfigError


def test_an_edit_makes_new_settings_by_env_or_field_name():
    base = load_settings({})
    edited = replace_settings(base, {"DEFAULT_MODEL": "openai/gpt-4o", "request_timeout": "60"})
    assert edited.default_model == "openai/gpt-4o" and edited.request_timeout == 60.0
    assert base.default_model != "openai/gpt-4o"  # never changed in place


@pytest.mark.parametrize("name", ["PORT", "ENCRYPTION_KEY", "NO_SUCH_SETTING"])
def test_only_editable_settings_can_be_edited(name):
    with pytest.raises(ConfigError, match=f"^{name}: not an editable setting"):
        replace_settings(load_settings({}), {name: "1"})


def test_an_invalid_edit_is_refused_whole():
    with pytest.raises(ConfigError, match="REQUEST_TIMEOUT_SECONDS="):
        replace_settings(load_settings({}), {"REQUEST_TIMEOUT_SECONDS": "-1"})


def test_stored_edits_lie_over_the_environment_and_a_bad_one_is_skipped(caplog):
    env = load_settings({"DEFAULT_MODEL": "from/env", "REQUEST_TIMEOUT_SECONDS": "30"})
    stored = {"DEFAULT_MODEL": "from/admin", "REQUEST_TIMEOUT_SECONDS": "forever"}
    with caplog.at_level(logging.ERROR, "orpoll"):
        config = overlay_settings(env, stored)
    assert config.default_model == "from/admin" and config.request_timeout == 30.0
    assert any("REQUEST_TIMEOUT_SECONDS" in r.getMessage() for r in caplog.records)
