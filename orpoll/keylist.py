"""Parsing ``key[:weight]`` lists: OPENROUTER_API_KEYS and the admin's key boxes."""

from __future__ import annotations

import re

from .keys import MAX_WEIGHT, mask

# What a key may look like: visible ASCII, no separators (it goes into an HTTP header).
KEY_RE = re.compile(r"^[\x21-\x7e]{1,512}$")


def parse_keys(text: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Parse ``key[:weight]`` entries split by commas or newlines.

    Returns ``(entries, errors)``: entries in first-seen order with duplicates collapsed, and one
    message per rejected entry (naming only the key's last 4 characters).
    """
    entries: dict[str, int] = {}
    errors: list[str] = []
    for raw in re.split(r"[,\n\r]+", text or ""):
        raw = raw.strip()
        if not raw:
            continue
        key, weight = raw, 1
        if ":" in raw:
            key, _, w = raw.rpartition(":")
            key = key.strip()
            if not w.strip().isdigit() or not 1 <= int(w) <= MAX_WEIGHT:
                errors.append(f"{mask(key)}: invalid weight {w.strip()[:12]!r} (1..{MAX_WEIGHT})")
                continue
            weight = int(w)
        if not KEY_RE.match(key):
            errors.append(f"{mask(key)}: not a valid key (visible ASCII, no spaces, <= 512)")
            continue
        entries.setdefault(key, weight)
    return list(entries.items()), errors
