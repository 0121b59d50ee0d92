"""cli.py: a flag for every setting, flags over the environment, errors that name the flag, and
the DATA_DIR check that ends start-up with one line."""

from __future__ import annotations

import os

import pytest

from orpoll.cli import StartupError, check_data_dir, flag_of, load, parser
from orpoll.config import ENV_FIELDS
from orpoll.values import ConfigError


def test_every_setting_has_its_flag():
    help_text = parser().format_help()
    for env in ENV_FIELDS:
        assert flag_of(env) in help_text
    assert flag_of("LOG_LEVEL") == "--log-level"


def test_a_flag_wins_over_the_environment():
    config = load(["--port", "9001"], {"PORT": "8001", "LOG_LEVEL": "debug"})
    assert config.port == 9001 and config.log_level == "debug"


def test_a_boolean_flag_alone_means_true():
    assert load(["--trust-proxy-headers"], {}).trust_proxy_headers is True
    assert load(["--trust-proxy-headers", "false"], {}).trust_proxy_headers is False


def test_a_bad_flag_value_names_the_flag():
    with pytest.raises(ConfigError, match=r"^--port: PORT='x'"):
        load(["--port", "x"], {})


def test_an_unknown_flag_exits_with_the_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        load(["--no-such-setting", "1"], {})
    assert exc.value.code == 2 and "usage:" in capsys.readouterr().err


def test_data_dir_is_made_when_missing(tmp_path):
    path = str(tmp_path / "a" / "b")
    check_data_dir(path)
    assert os.path.isdir(path)


def test_data_dir_that_is_a_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(StartupError, match="it is a file, not a directory") as exc:
        check_data_dir(str(path))
    assert exc.value.code == 2 and "\n" not in str(exc.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_data_dir_is_refused_with_the_uid(tmp_path):
    path = tmp_path / "ro"
    path.mkdir(mode=0o500)
    try:
        with pytest.raises(StartupError, match=f"uid {os.getuid()}"):
            check_data_dir(str(path))
    finally:
        path.chmod(0o700)
