"""Parsing ``key[:weight]`` lists: OPENROUTER_API_KEYS and the admin's key boxes.

An OpenRouter key starts with ``sk-or-`` and is visible ASCII without spaces or quotes; nothing
more is asked of its shape, since test fakes and future key formats differ. What a paste from a
shell or an env file wraps around keys (``NAME=``, surrounding quotes) is stripped with a note.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .keys import MAX_WEIGHT

KEY_PREFIX = "sk-or-"
MAX_KEY_LENGTH = 512
LINE_SPLIT = re.compile(r"\r\n|\r|\n")
# `OPENROUTER_API_KEYS=...` or `export OPENROUTER_API_KEYS=...` (a key cannot match: `-`).
NAME_PREFIX = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
QUOTES = "\"'`"


class KeyList(NamedTuple):
    entries: list[tuple[str, int]]  # first-seen order, duplicates collapsed
    problems: list[str]  # one per rejected entry: why, where, and the entry's last 4 characters
    notes: list[str]  # what was stripped (one per kind)
    rejected_lines: list[int]  # 1-based lines holding a rejected entry (to keep in an input box)
    seen: int  # entries read: accepted, repeated and rejected


def visible(text: str) -> str:
    return "".join(c if "!" <= c <= "~" else "?" for c in text)


def shown(text: str) -> str:
    """The last 4 characters, as a message may show them (never more of a key)."""
    return "..." + visible(text[-4:])


def weight_of(text: str) -> int | None:
    """A weight 1..MAX_WEIGHT, or None. ASCII digits only: ``int()`` takes other Unicode digits
    and refuses more than 4300 of them."""
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_WEIGHT))):
        return None
    weight = int(text)
    return weight if 1 <= weight <= MAX_WEIGHT else None


def key_problem(key: str) -> str:
    """Why ``key`` is not an OpenRouter key ("" if it is one)."""
    if any(q in key for q in QUOTES):
        return "it contains a quote"
    if not key.startswith(KEY_PREFIX):
        return f"keys start with {KEY_PREFIX}"
    if len(key) == len(KEY_PREFIX):
        return f"nothing after {KEY_PREFIX}"
    if len(key) > MAX_KEY_LENGTH:
        return f"longer than {MAX_KEY_LENGTH} characters"
    for c in key:
        if c.isspace():
            return "it contains a space (give one key per line or separate keys by commas)"
        if not "!" <= c <= "~":
            return "it contains a character that is not visible ASCII"
    return ""


class Parser:
    """One pass over a text; collects entries, problems and notes."""

    def __init__(self, text: str) -> None:
        self.lines = LINE_SPLIT.split(text or "")
        self.entries: dict[str, int] = {}
        self.problems: list[str] = []
        self.rejected: list[int] = []
        self.stripped: dict[str, int] = {}  # note -> how many times
        self.seen = 0

    def unwrap(self, text: str) -> str:
        """Strip a ``NAME=`` prefix, then one pair of surrounding quotes, noting each."""
        text = text.strip()
        name = NAME_PREFIX.match(text)
        if name:
            self.note(f"removed the prefix {name.group(1)[:40]}=")
            text = text[name.end() :]
        if len(text) >= 2 and text[0] in QUOTES and text[-1] == text[0]:
            if text[0] not in text[1:-1]:
                self.note("removed surrounding quotes")
                text = text[1:-1].strip()
        return text

    def note(self, what: str) -> None:
        self.stripped[what] = self.stripped.get(what, 0) + 1

    def reject(self, lineno: int, entry: str, why: str) -> None:
        where = f"line {lineno}: " if len(self.lines) > 1 else ""
        self.problems.append(f'{where}"{shown(entry)}" is not accepted: {why}')
        if not self.rejected or self.rejected[-1] != lineno:
            self.rejected.append(lineno)

    def entry(self, lineno: int, raw: str) -> None:
        self.seen += 1
        key, weight = self.unwrap(raw), 1
        if ":" in key:
            key, _, w = key.rpartition(":")
            key, w = key.strip(), w.strip()
            given = weight_of(w)
            if given is None:
                why = (
                    f'invalid weight "{visible(w[:12])}" (give key:weight, weight 1..{MAX_WEIGHT})'
                )
                return self.reject(lineno, key, why)
            weight = given
        why = key_problem(key)
        if why:
            return self.reject(lineno, key, why)
        self.entries.setdefault(key, weight)

    def run(self) -> KeyList:
        for lineno, line in enumerate(self.lines, 1):
            for raw in self.unwrap(line).split(","):
                if raw.strip():
                    self.entry(lineno, raw)
        notes = [f"{what} ({n}x)" if n > 1 else what for what, n in self.stripped.items()]
        entries = list(self.entries.items())
        return KeyList(entries, self.problems, notes, self.rejected, self.seen)


def parse_key_text(text: str) -> KeyList:
    """Parse ``key[:weight]`` entries split by commas or newlines (see KeyList)."""
    return Parser(text).run()


def parse_keys(text: str) -> tuple[list[tuple[str, int]], list[str]]:
    """``(entries, problems)`` of :func:`parse_key_text`; problems name only a key's last 4
    characters."""
    parsed = parse_key_text(text)
    return parsed.entries, parsed.problems
