"""values.py: one setting's text made into its typed value, within bounds, or a ConfigError
naming the variable."""

from __future__ import annotations

import pytest

from orpoll.config import FIELDS
from orpoll.values import ConfigError, check_url, parse_value


@pytest.mark.parametrize("raw,value", [("yes", True), (" On ", True), ("0", False), (True, True)])
def test_booleans_take_the_usual_words(raw, value):
    assert parse_value(FIELDS["trust_proxy_headers"], raw) is value


def test_an_integer_setting_takes_digits_and_whole_numbers_only():
    port = FIELDS["port"]
    assert parse_value(port, " 9001 ") == 9001
    assert parse_value(port, 9001.0) == 9001
    for raw in ("1e3", "9001.5", 9001.5, True, None, "0", "65536"):
        with pytest.raises(ConfigError, match=r"^PORT="):
            parse_value(port, raw)


@pytest.mark.parametrize("raw", ["inf", "nan", "-1", "1e300", [1]])
def test_a_number_is_finite_and_within_its_bounds(raw):
    with pytest.raises(ConfigError, match=r"^REQUEST_TIMEOUT_SECONDS="):
        parse_value(FIELDS["request_timeout"], raw)


def test_choices_are_case_insensitive_and_listed_when_wrong():
    assert parse_value(FIELDS["log_format"], "JSON") == "json"
    with pytest.raises(ConfigError, match="expected one of text, json"):
        parse_value(FIELDS["log_format"], "xml")


def test_a_string_setting_refuses_what_is_not_text():
    with pytest.raises(ConfigError, match="expected a string"):
        parse_value(FIELDS["default_model"], ["a"])


@pytest.mark.parametrize("url", ["https://orpoll.example.com", "http://10.0.0.1:8080/x"])
def test_urls_with_a_scheme_and_host_pass(url):
    check_url("PUBLIC_URL", url)


@pytest.mark.parametrize("url", ["orpoll.example.com", "ftp://h", "https://", "http://h:99999"])
def test_other_urls_are_refused(url):
    with pytest.raises(ConfigError, match=r"^PUBLIC_URL="):
        check_url("PUBLIC_URL", url)
