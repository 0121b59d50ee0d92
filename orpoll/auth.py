"""Who may use the proxy: the client bearer check for /v1, and for /admin the password,
the login throttle, server-side sessions and the cookie and CSRF rules."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("orpoll.admin")


def parse_client_keys(value: str) -> tuple[bytes, ...]:
    """APP_API_KEY as a tuple of accepted keys (comma-separated; empty = /v1 is open)."""
    return tuple(k.strip().encode() for k in (value or "").split(",") if k.strip())


def bearer(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>`` ('' when absent)."""
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def client_key_ok(keys: tuple[bytes, ...], headers: Mapping[str, str]) -> bool:
    """True if /v1 is open or the request carries one of ``keys`` (constant-time compare)."""
    if not keys:
        return True
    token = bearer(headers).encode()
    ok = False
    for key in keys:  # compare against every key so timing does not tell which one matched
        ok |= hmac.compare_digest(token, key)
    return ok


# ---- admin password -------------------------------------------------------------------------

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_LENGTH = 12


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64); slow by design: call it off the event loop."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against ``hash_password`` output."""
    try:
        _, n, r, p, salt, digest = encoded.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def weak_password(password: str) -> str | None:
    """Why a new admin password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password must have at least {MIN_PASSWORD_LENGTH} characters"
    if password.lower() in ("admin", "password", "changeme"):
        return "that password is too easy to guess"
    return None


class AdminPassword:
    """The admin password: ADMIN_PASSWORD when set; otherwise a scrypt hash in the store,
    generated (and handed back once, to be logged) on the first start."""

    def __init__(self, store: Store, env_password: str) -> None:
        self.store, self.env = store, env_password
        self.hash = store.get_meta("admin_password") or ""
        self._env_digest = hashlib.sha256(env_password.encode()).digest()
        self._env_hashed = False  # the stored hash is known to be ADMIN_PASSWORD's

    @property
    def from_env(self) -> bool:
        return bool(self.env)

    def setup(self, sessions: Sessions) -> str | None:
        """Check the configuration at start; returns a newly generated password, else None.

        With ADMIN_PASSWORD set and sessions alive, a password that no longer matches the
        stored hash revokes them (the only start-up scrypt; fresh stores skip it).
        """
        if self.env:
            if self.env == "admin":
                log.warning(
                    "INSECURE: ADMIN_PASSWORD is 'admin'. Anyone who guesses it controls your "
                    "OpenRouter keys. Set a long random password."
                )
            if sessions.active:
                self._env_hashed = verify_password(self.env, self.hash)
                if not self._env_hashed:
                    log.info("ADMIN_PASSWORD changed: signing out every admin session")
                    sessions.revoke_all_now()
            return None
        if self.hash:
            return None
        password = secrets.token_urlsafe(18)
        self._store_hash(hash_password(password))
        return password

    def _store_hash(self, encoded: str) -> None:
        self.hash = encoded
        self.store.set_meta("admin_password", encoded)

    async def verify(self, password: str) -> bool:
        """True if ``password`` is the admin password (constant time)."""
        loop = asyncio.get_running_loop()
        if not self.env:
            return bool(self.hash) and await loop.run_in_executor(
                None, verify_password, password, self.hash
            )
        given = hashlib.sha256(password.encode()).digest()
        ok = hmac.compare_digest(given, self._env_digest)
        if ok and not self._env_hashed:
            # Remember a hash of the env password, so a later change of it revokes sessions.
            self._env_hashed = True
            encoded = await loop.run_in_executor(None, hash_password, password)
            await self.store.run(self._store_hash, encoded)
        return ok

    async def change(self, new: str) -> None:
        """Store a new password (the caller checked the current one and revokes sessions)."""
        encoded = await asyncio.get_running_loop().run_in_executor(None, hash_password, new)
        await self.store.run(self._store_hash, encoded)


# ---- login throttle -------------------------------------------------------------------------


class LoginThrottle:
    """Failed logins per client address; past ``max_failures`` the address waits
    ``base * 2 ** (extra failures)`` seconds (capped) before it may try again.

    A try counts as a failure from the moment it is admitted (``reserve``), before its
    password check (scrypt in a thread) ends: otherwise any number of concurrent tries would
    all be admitted while the first check still ran. A right password clears the count.
    """

    def __init__(
        self,
        max_failures: Callable[[], int],
        *,
        clock: Callable[[], float] = time.monotonic,
        base: float = 30.0,
        cap: float = 3600.0,
    ) -> None:
        self.max_failures, self.clock, self.base, self.cap = max_failures, clock, base, cap
        self.failures: dict[str, tuple[int, float]] = {}  # addr -> (count, last failure)
        # Told of every counted failure (False) and success (True) by address, for instances
        # that share the count; their news comes back through ``failed``/``succeeded`` with
        # ``shared=True``, which tells nobody.
        self.notify: Callable[[str, bool], None] | None = None

    def retry_after(self, addr: str) -> float:
        """Seconds ``addr`` must wait before its next attempt (0 = may try now)."""
        count, last = self.failures.get(addr, (0, 0.0))
        over = count - self.max_failures()
        if over < 0:
            return 0.0
        wait = last + min(self.base * 2.0**over, self.cap) - self.clock()
        return max(wait, 0.0)

    def reserve(self, addr: str) -> tuple[float, int]:
        """Admit a try from ``addr``: ``(0, failures so far including this one)``, counted as
        a failure until ``succeeded``; or ``(seconds to wait, count)`` and nothing counted."""
        wait = self.retry_after(addr)
        if wait:
            return wait, self.failures[addr][0]
        return 0.0, self.failed(addr)

    def failed(self, addr: str, shared: bool = False) -> int:
        if self.notify is not None and not shared:
            self.notify(addr, False)
        now = self.clock()
        count, last = self.failures.get(addr, (0, 0.0))
        if now - last > self.cap:
            count = 0  # an old streak is forgotten
        self.failures[addr] = (count + 1, now)
        if len(self.failures) > 10_000:
            self._forget(now)
        return count + 1

    def succeeded(self, addr: str, shared: bool = False) -> None:
        if self.notify is not None and not shared:
            self.notify(addr, True)
        self.failures.pop(addr, None)

    def _forget(self, now: float) -> None:
        for addr, (_, last) in list(self.failures.items()):
            if now - last > self.cap:
                del self.failures[addr]


# ---- sessions -------------------------------------------------------------------------------

SESSION_COOKIE = "orpoll_session"


@dataclass(slots=True)
class Session:
    sid: str  # SHA-256 of the cookie's token: the store never sees a usable token
    created: float
    expires: float
    addr: str
    refreshed: float


class Sessions:
    """Server-side admin sessions: logout and a password change end them at once.

    The cookie (signed by Tornado) carries a random token; memory and the store hold its hash.
    Expiry slides: each use extends it to now + lifetime, saved at most every few minutes.
    """

    def __init__(
        self, store: Store, lifetime: Callable[[], float], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store, self.lifetime, self.clock = store, lifetime, clock
        self.active: dict[str, Session] = {}
        # Told of each session saved ("add", with the Session) or ended ("revoke" with its id,
        # "revoke_all"), for instances that share sessions; ``adopt``/``drop`` tell nobody.
        self.notify: Callable[[str, Any], None] | None = None

    def _tell(self, what: str, arg: Any = None) -> None:
        if self.notify is not None:
            self.notify(what, arg)

    @staticmethod
    def sid_of(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def load(self) -> None:
        for sid, created, expires, addr in self.store.load_sessions(self.clock()):
            self.active[sid] = Session(sid, created, expires, addr, created)

    async def create(self, addr: str) -> str:
        """A new session; returns the token for the cookie."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        s = Session(self.sid_of(token), now, now + self.lifetime(), addr, now)
        await self.store.run(self.store.add_session, s.sid, s.created, s.expires, s.addr)
        self.active[s.sid] = s
        self._tell("add", s)
        return token

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token`` (no I/O)."""
        s = self.active.get(self.sid_of(token)) if token else None
        if s is not None and s.expires <= self.clock():
            del self.active[s.sid]
            return None
        return s

    def stale(self, s: Session) -> bool:
        """True when the sliding expiry is due to be pushed forward (and saved)."""
        return self.clock() - s.refreshed > min(self.lifetime() / 20, 300.0)

    async def refresh(self, s: Session) -> None:
        s.refreshed = now = self.clock()
        s.expires = now + self.lifetime()
        await self.store.run(self.store.touch_session, s.sid, s.expires)
        self._tell("add", s)

    async def revoke(self, token: str) -> None:
        sid = self.sid_of(token)
        self.active.pop(sid, None)
        await self.store.run(self.store.delete_sessions, sid)
        self._tell("revoke", sid)

    async def revoke_all(self) -> int:
        n = len(self.active)
        self.active.clear()
        await self.store.run(self.store.delete_sessions, None)
        self._tell("revoke_all")
        return n

    async def adopt(self, sid: str, created: float, expires: float, addr: str) -> None:
        """Another instance's session (already saved there)."""
        if expires > self.clock():
            self.active[sid] = Session(sid, created, expires, addr, self.clock())
            await self.store.run(self.store.add_session, sid, created, expires, addr)

    async def drop(self, sid: str | None) -> None:
        """End one session (None: every session) that another instance ended."""
        if sid is None:
            self.active.clear()
        else:
            self.active.pop(sid, None)
        await self.store.run(self.store.delete_sessions, sid)

    def revoke_all_now(self) -> None:
        """Synchronous revoke_all for start-up."""
        self.active.clear()
        self.store.delete_sessions(None)


def cookie_options(secure: bool, **kwargs: Any) -> dict[str, Any]:
    """Options of every admin cookie: HttpOnly, SameSite=Strict, Secure under https."""
    return {"httponly": True, "samesite": "Strict", "secure": secure, **kwargs}


def origin_ok(origin: str | None, hosts: tuple[str, ...]) -> bool:
    """True unless ``origin`` (the ``Origin`` header) names a host other than ``hosts``."""
    if origin is None:
        return True
    try:
        netloc = urllib.parse.urlsplit(origin).netloc
    except ValueError:  # "http://[" and the like
        return False
    return bool(netloc) and netloc.lower() in hosts


# A path on this site, as a browser sends it: printable ASCII without spaces or backslashes,
# not "//" (another host). Browsers drop tabs and newlines from a Location, so "/\t/host"
# would lead to //host; a CR or LF cannot go into a header at all.
LOCAL_PATH = re.compile(r"/(?![/\\])[!-\[\]-~]*")


def local_path(target: str | None, default: str) -> str:
    """``target`` if it is a plain path on this site (for ``next=``), else ``default``."""
    if target and LOCAL_PATH.fullmatch(target):
        return target
    return default
