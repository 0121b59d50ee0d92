"""Key-list parsing: what counts as an OpenRouter key, what is stripped (with a note), what is
rejected (with the reason, the line and the entry's suffix), and a property test of the parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orpoll.keylist import KEY_PREFIX, parse_key_text, parse_keys

GOOD = "sk-or-v1-0123456789abcdef"


@pytest.mark.parametrize(
    "text,why",
    [
        ("x", "start with sk-or-"),
        ("hello-not-a-key", "start with sk-or-"),
        ("sk-a", "start with sk-or-"),
        ("sk-or-v1 abcd", "space"),
        ("sk-or-v1-ab\tcd", "space"),
        ('sk-or-v1-"abcd', "quote"),
        ("sk-or-v1-ab\u00e9cd", "visible ASCII"),
        ("sk-or-" + "a" * 600, "512"),
        ("sk-or-", "nothing after sk-or-"),
        (GOOD + ":0", "weight"),
        (GOOD + ":x", "weight"),
        pytest.param(GOOD + ":\u00b2", "weight", id="unicode-digit"),  # int() refuses it
        pytest.param(GOOD + ":" + "1" * 5000, "weight", id="5000-digits"),  # int() refuses them
    ],
)
def test_non_keys_are_rejected_with_the_reason_and_the_suffix(text, why):
    entries, problems = parse_keys(text)
    assert entries == [] and len(problems) == 1
    assert why in problems[0]
    tail = text.rsplit(":", 1)[0][-4:]
    assert "..." + "".join(c if "!" <= c <= "~" else "?" for c in tail) in problems[0]


def test_bulk_messages_name_the_line_and_keep_the_rejected_lines():
    text = f"{GOOD}\nhello-not-a-key\n\nsk-or-v1-second, x\nsk-or-v1-third:2"
    parsed = parse_key_text(text)
    assert parsed.entries == [(GOOD, 1), ("sk-or-v1-second", 1), ("sk-or-v1-third", 2)]
    assert [m.split(":")[0] for m in parsed.problems] == ["line 2", "line 4"]
    assert parsed.rejected_lines == [2, 4]


def test_quotes_and_a_name_prefix_are_stripped_with_a_note():
    for text in (
        f'"{GOOD}"',
        f"'{GOOD}'",
        f"OPENROUTER_API_KEYS={GOOD}",
        f'OPENROUTER_API_KEYS="{GOOD}"',
        f"export OPENROUTER_API_KEYS='{GOOD}'",
    ):
        parsed = parse_key_text(text)
        assert parsed.entries == [(GOOD, 1)] and parsed.problems == [], text
        assert parsed.notes and GOOD not in " ".join(parsed.notes), text
    parsed = parse_key_text(f'OPENROUTER_API_KEYS="{GOOD}:3,sk-or-v1-other"')
    assert parsed.entries == [(GOOD, 3), ("sk-or-v1-other", 1)] and parsed.problems == []


def test_a_clean_list_has_no_notes():
    parsed = parse_key_text(f"{GOOD}:2, sk-or-v1-b\nsk-or-v1-c")
    assert parsed.notes == [] and parsed.problems == [] and len(parsed.entries) == 3


def test_messages_never_hold_a_full_key():
    long_key = "sk-or-v1-" + "f" * 64
    for text in (long_key + ":0", long_key + " tail", f'"{long_key}', f"A={long_key}"):
        parsed = parse_key_text(text)
        for message in parsed.problems + parsed.notes:
            assert long_key[:-4] not in message, message


def test_lists_split_on_commas_and_newlines_and_trim():
    entries, errors = parse_keys(" sk-or-a ,sk-or-b\nsk-or-c\r\n\n, ,sk-or-d:7\n")
    assert entries == [("sk-or-a", 1), ("sk-or-b", 1), ("sk-or-c", 1), ("sk-or-d", 7)]
    assert errors == []


def test_invalid_weights_are_reported_without_the_key():
    secret = "sk-or-v1-secretsecret9999"
    text = f"sk-or-ok:2,{secret}:abc,sk-or-zero:0,sk-or-neg:-1,sk-or-big:99999999"
    entries, errors = parse_keys(text)
    assert entries == [("sk-or-ok", 2)]
    assert len(errors) == 4 and all("invalid weight" in e for e in errors)
    assert "9999" in errors[0] and all(secret not in e for e in errors)


def test_duplicates_collapse_and_the_first_weight_wins():
    entries, errors = parse_keys("sk-or-a:2,sk-or-b,sk-or-a:5\nsk-or-a")
    assert entries == [("sk-or-a", 2), ("sk-or-b", 1)]
    assert errors == []


# ---- property ---------------------------------------------------------------------------------

# Visible ASCII minus what the list syntax uses (separators, weight colon) and quotes (with `).
KEY_CHARS = st.sampled_from([chr(c) for c in range(0x21, 0x7F) if chr(c) not in ",:\"'`"])
keys = st.builds(lambda tail: KEY_PREFIX + tail, st.text(KEY_CHARS, min_size=1, max_size=40))
weighted = st.tuples(keys, st.one_of(st.none(), st.integers(1, 1000)))


def render(key: str, weight: int | None, quote: str) -> str:
    return quote + key + (f":{weight}" if weight is not None else "") + quote


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(st.tuples(weighted, st.sampled_from(["", '"', "'"])), max_size=12),
    st.lists(st.sampled_from([",", "\n", ", ", " ,\n", "\r\n", "\n\n"]), min_size=12, max_size=12),
)
def test_valid_lists_parse_to_their_keys_in_order(items, seps):
    text = "".join(render(k, w, q) + seps[i] for i, ((k, w), q) in enumerate(items))
    parsed = parse_key_text(text)
    expected: dict[str, int] = {}
    for (key, weight), _ in items:
        expected.setdefault(key, weight or 1)
    assert parsed.entries == list(expected.items())
    assert parsed.problems == [] and parsed.rejected_lines == []


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=200))
def test_any_text_gives_keys_or_reasons_never_an_exception(text):
    parsed = parse_key_text(text)
    for key, weight in parsed.entries:
        assert key.startswith(KEY_PREFIX) and len(key) > len(KEY_PREFIX)
        assert all(0x21 <= ord(c) < 0x7F and c not in "\"'" for c in key)
        assert 1 <= weight
    lines = len(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    assert all(1 <= n <= lines for n in parsed.rejected_lines)
    assert len(parsed.rejected_lines) <= len(parsed.problems)
