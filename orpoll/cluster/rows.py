"""How a key travels between instances: its operator row (the key, sealed when ENCRYPTION_KEY
is set, weight, label, enabled, rev) and its shared runtime state, as JSON strings.

Shared state is what a verdict decides (cooldowns with their reset times, disabled, the
``:free`` quota, the account group) and what probes learn (``info``). Counters and failure
streaks stay each instance's own: they describe its traffic, not the key.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..keys import KeyState
from ..seal import Sealer

Shared = tuple[Any, ...]


def encode_key(ks: KeyState, sealer: Sealer | None) -> str:
    if sealer is None:
        secret, sealed = ks.key, False
    else:
        secret, sealed = base64.b64encode(sealer.seal(ks.key, ks.id)).decode(), True
    row = {"key": secret, "sealed": sealed, "weight": ks.weight, "label": ks.label}
    row.update(enabled=ks.enabled, added_at=ks.added_at, rev=ks.rev)
    return json.dumps(row)


def decode_key(text: str, kid: str, sealer: Sealer | None) -> dict[str, Any]:
    """The operator row of ``kid``; raises ValueError when it is sealed and cannot be opened
    here (no ENCRYPTION_KEY, or another one)."""
    row: dict[str, Any] = json.loads(text)
    if row.pop("sealed"):
        if sealer is None:
            raise ValueError("the shared pool is encrypted: set ENCRYPTION_KEY")
        try:
            row["key"] = sealer.open(base64.b64decode(row["key"]), kid)
        except Exception:
            raise ValueError("ENCRYPTION_KEY does not open the shared pool's keys") from None
    return row


def state_of(ks: KeyState) -> dict[str, Any]:
    return {
        "state": ks.state,
        "until": ks.until,
        "free_until": ks.free_until,
        "reason": ks.reason,
        "kind": ks.kind,
        "group": ks.group,
        "info": ks.info,
    }


def encode_state(ks: KeyState) -> str:
    return json.dumps(state_of(ks))


def decode_state(text: str) -> dict[str, Any]:
    return json.loads(text)  # type: ignore[no-any-return]


def shared(state: dict[str, Any], now: float) -> Shared:
    """A comparable form of a shared state as of ``now``: a cooldown that has ended reads as
    available, so instances re-admitting a key at its reset time agree without a message."""
    st, until, reason, kind = state["state"], state["until"], state["reason"], state["kind"]
    if st == "cooling" and until <= now:
        st, until, reason, kind = "available", 0.0, "", ""
    free = state["free_until"] if state["free_until"] > now else 0.0
    info = json.dumps(state["info"], sort_keys=True)
    return st, until, free, reason, kind, state["group"], info
