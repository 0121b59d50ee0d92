"""Key seeding at start-up: the store's keys are the pool; OPENROUTER_API_KEYS fills an empty
store once, and is only compared with it afterwards."""

from __future__ import annotations

import logging

from .keylist import parse_key_text, parse_keys
from .keys import key_id, mask
from .logs import plural
from .scheduler import KeyScheduler
from .store import Store
from .writebehind import load_pool

log = logging.getLogger("orpoll")


def seed_pool(store: Store, scheduler: KeyScheduler, env_keys: str) -> None:
    """Load the pool from ``store``; an empty store is seeded from ``env_keys``."""
    if load_pool(store, scheduler):
        note_env_keys(scheduler, env_keys)
    else:
        load_env_keys(scheduler, env_keys)
        store.insert_keys(list(scheduler))


def load_env_keys(scheduler: KeyScheduler, text: str) -> int:
    """Add OPENROUTER_API_KEYS to the pool; logs rejected entries; returns how many were added."""
    entries, problems, notes, *_ = parse_key_text(text)
    for problem in problems:
        log.warning("OPENROUTER_API_KEYS: %s", problem)
    for note in notes:
        log.info("OPENROUTER_API_KEYS: %s", note)
    added = sum(1 for key, weight in entries if scheduler.add(key, weight) is not None)
    if entries:
        log.info(
            "loaded %s (%s)",
            plural(added, "key"),
            ", ".join(mask(k) for k, _ in entries[:3]) + (", ..." if len(entries) > 3 else ""),
        )
    return added


def note_env_keys(scheduler: KeyScheduler, text: str) -> None:
    """Once the store holds keys it is the pool; say so if OPENROUTER_API_KEYS differs."""
    entries, _ = parse_keys(text)
    missing = sum(1 for key, _ in entries if key_id(key) not in scheduler.keys)
    if missing:
        log.warning(
            "OPENROUTER_API_KEYS lists %s not in the store, ignored "
            "(the store seeded from it once; add keys in the admin or POST /admin/add-keys)",
            plural(missing, "key"),
        )
