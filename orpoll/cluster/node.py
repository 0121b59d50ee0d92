"""Cluster: this instance's link to the others sharing its pool. It publishes local changes
(queued, so a backend outage loses none), applies the others' without publishing them again,
merges with the snapshot on every (re)connection and every RECONCILE seconds, and shares the
health sweeps out by leases.

The request path never waits for it: picks stay local, and only changes of state travel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..keys import KeyState
from ..seal import SECRET_FILE, Sealer
from ..store import StoreError
from .adminsync import AdminSync
from .backend import Backend, BackendDown
from .keysync import KeySync

if TYPE_CHECKING:
    from ..app import OrpollApp

log = logging.getLogger("orpoll.cluster")
READ_WAIT = 1.0  # longest wait on the log per read (also how soon a stop is noticed)
RETRY = 0.5  # between tries to reach a backend that is down
RECONCILE = 30.0
PUBLISH = 0.2  # write-behind interval while clustered: state changes travel within it
FOREVER = 10 * 365 * 86400.0  # the ttl of names that must not expire (salt, session secret)


class NoCluster:
    """A single instance: nothing is shared, nothing runs."""

    enabled = degraded = False

    def state(self) -> dict[str, Any]:
        return {"backend": "none"}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def keys_edited(self, ids: list[str]) -> None:
        pass

    def keys_removed(self, ids: list[str], at: float) -> None:
        pass

    async def settings_saved(self) -> None:
        pass

    async def password_changed(self) -> None:
        pass

    async def find_session(self, sid: str) -> bool:
        return False

    async def settle(self) -> None:
        pass


class Cluster(NoCluster):
    enabled = True

    def __init__(self, app: OrpollApp, backend: Backend) -> None:
        self.app, self.backend = app, backend
        self.origin = os.urandom(8).hex()
        self.keys = KeySync(app, backend, self.origin)
        self.admin = AdminSync(app, backend, self.origin)
        self.connected = False
        self.degraded = True  # until the first connection
        self.since = time.time()
        self.epoch: str | None = None
        self.cursor: str | None = None
        self.error = ""  # why the backend was last unreachable
        self.salt = ""  # of the shared pool's sealer
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._failure = ""  # the last failure logged by the event task
        self._flush_lock = asyncio.Lock()

    def state(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "connected": self.connected,
            "since": self.since,
            "queued": self.keys.pending or self.admin.pending,
            "error": "" if self.connected else self.error,
        }

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, wait: float = 3.0) -> None:
        """Join: hook into the app, reach the backend (up to ``wait`` seconds; the instance
        serves from its own state meanwhile), then keep the link in the background."""
        app = self.app
        self.keys.gone = await app.store.run(app.store.gone)
        app.write_behind.publish = self._states
        app.write_behind.interval = PUBLISH
        app.health.claim = self.claim_probes
        app.sessions.notify = self._session
        app.login_throttle.notify = self._login
        try:
            await asyncio.wait_for(self._join(), wait)
        except TimeoutError:
            pass
        except StoreError:
            raise
        except Exception:
            log.exception("joining the cluster failed; will retry")
        if not self.connected:
            log.warning(
                "cluster backend (%s) unreachable (%s): serving from local state, changes queued",
                self.backend.name,
                self.error or "timed out",
            )
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._flusher())]

    async def stop(self, flush_wait: float = 2.0) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.connected:
            with contextlib.suppress(asyncio.TimeoutError, BackendDown):
                await asyncio.wait_for(self._flush(), flush_wait)
        await self.backend.close()

    async def _join(self) -> bool:
        """Connect and merge; True when connected. A StoreError (a shared pool sealed with
        another ENCRYPTION_KEY) is raised: joining would mix two pools."""
        try:
            epoch = await self.backend.connect()
            if self.app.config.encryption_key:
                await self._sealer(self.app.config.encryption_key)
            await self._session_secret()
            cursor = await self.backend.tail()
            if self.cursor is None or epoch != self.epoch:
                self.cursor = cursor
            # A new epoch: the backend may have lost what it held. If it restarted while we
            # ran, our key states are newer than whatever snapshot it came back with.
            restored = self.epoch is not None and epoch != self.epoch
            await self._merge(union=epoch != self.epoch, restored=restored)
        except BackendDown as e:
            self.error = str(e)
            return False
        self.epoch = epoch
        if not self.connected:
            self.connected, self.degraded, self.since = True, False, time.time()
            log.info("cluster backend (%s) connected", self.backend.name)
        self._wake.set()
        return True

    async def _merge(self, union: bool, restored: bool = False) -> None:
        await self.keys.reconcile(restored)
        await self.admin.pull_settings()
        await self.admin.pull_password()
        await self.admin.pull_sessions(union)

    def _down(self, error: BaseException) -> None:
        self.error = str(error)
        if self.connected:
            self.connected, self.degraded, self.since = False, True, time.time()
            log.warning(
                "cluster backend (%s) lost: %s; serving from local state, changes queued",
                self.backend.name,
                error,
            )

    async def _sealer(self, passphrase: str) -> None:
        """The sealer of the shared pool: ENCRYPTION_KEY with the salt kept in the backend
        (offered again on every join, so a backend restarted empty keeps the same one)."""
        b = self.backend
        await b.claim(["salt"], self.salt or base64.b64encode(os.urandom(16)).decode(), FOREVER)
        salt = await b.get("salt") or ""
        if salt != self.salt or self.keys.sealer is None:
            self.keys.sealer, self.salt = Sealer(passphrase, base64.b64decode(salt)), salt
        sealer = self.keys.sealer
        await b.claim(["check"], base64.b64encode(sealer.seal("orpoll", "check")).decode(), FOREVER)
        try:
            sealer.open(base64.b64decode(await b.get("check") or ""), "check")
        except Exception:
            raise StoreError("ENCRYPTION_KEY does not match the shared pool's") from None

    async def _session_secret(self) -> None:
        """One cookie secret for every instance (unless SESSION_SECRET_KEY sets it), so a
        session cookie from one instance is good on all."""
        if self.app.config.session_secret_key:
            return
        mine = self.app.settings["cookie_secret"]
        sealer = self.keys.sealer
        offer = base64.b64encode(sealer.seal(mine, "secret")).decode() if sealer else mine
        await self.backend.claim(["session_secret"], offer, FOREVER)
        got = await self.backend.get("session_secret") or offer
        shared = sealer.open(base64.b64decode(got), "secret") if sealer else got
        if shared != mine:
            self.app.settings["cookie_secret"] = shared
            # Kept in DATA_DIR too: after a restart with the backend down, this instance
            # still accepts the cluster's cookies.
            await self.app.store.run(keep_secret, self.app.config.data_dir, shared)

    # ---- background tasks ------------------------------------------------------------------

    async def _listen(self) -> None:
        """Apply the others' events in order, and merge with the snapshot every RECONCILE
        seconds, in this one task: a merge never interleaves with an event."""
        merged = time.monotonic()
        while not self._stopping:
            try:
                if not self.connected:
                    if not await self._join():
                        await asyncio.sleep(RETRY)
                    merged = time.monotonic()
                    continue
                assert self.cursor is not None
                self.cursor, events = await self.backend.read(self.cursor, READ_WAIT)
                for event in events:
                    if event.get("o") != self.origin:
                        await self._apply(event)
                if self.keys.pending or self.admin.pending:
                    # A merge found ours newer than what an event named (two instances
                    # refilling an emptied Redis at once): publish it again now.
                    self._wake.set()
                if time.monotonic() - merged >= RECONCILE:
                    await self._merge(union=False)
                    merged = time.monotonic()
                    self._wake.set()
            except BackendDown as e:
                self._down(e)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Logged once per distinct failure: one that repeats at every retry (a pool
                # sealed with another ENCRYPTION_KEY after a restart) must not flood the log.
                self.error = str(e) or type(e).__name__
                if repr(e) != self._failure:
                    self._failure = repr(e)
                    log.exception("cluster link failed (retrying every %gs)", RETRY)
                await asyncio.sleep(RETRY)

    async def _apply(self, event: dict[str, Any]) -> None:
        kind = event["t"]
        if kind == "keys":
            await self.keys.pull(event["ids"])
        elif kind == "state":
            await self.keys.pull(event["ids"], with_keys=False)
        else:
            await self.admin.apply(event)

    async def _flusher(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if not self.connected:
                continue
            try:
                await self._flush()
            except BackendDown as e:
                self._down(e)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing to the cluster failed")

    async def _flush(self) -> None:
        async with self._flush_lock:  # one publisher at a time: the order of changes holds
            await self.keys.flush()
            await self.admin.flush()

    async def settle(self, wait: float = 1.0) -> None:
        """Publish what is queued now, before the caller answers (a login or logout: the next
        request may reach another instance at once). Never raises; an outage leaves it
        queued."""
        if not self.connected:
            return
        try:
            await asyncio.wait_for(self._flush(), wait)
        except (TimeoutError, BackendDown):
            self._wake.set()

    # ---- hooks -----------------------------------------------------------------------------

    def _states(self, keys: list[KeyState]) -> None:
        if self.keys.states(keys):
            self._wake.set()

    def _session(self, what: str, arg: Any) -> None:
        self.admin.session(what, arg)
        self._wake.set()

    def _login(self, addr: str, ok: bool) -> None:
        self.admin.login(addr, ok)
        self._wake.set()

    def keys_edited(self, ids: list[str]) -> None:
        self.keys.edited(ids)
        self._wake.set()

    def keys_removed(self, ids: list[str], at: float) -> None:
        self.keys.removed(ids, at)
        self._wake.set()

    async def settings_saved(self) -> None:
        await self.admin.settings_saved()
        self._wake.set()

    async def password_changed(self) -> None:
        await self.admin.password_changed()
        self._wake.set()

    async def find_session(self, sid: str) -> bool:
        """True if ``sid`` is a live session of the cluster's, taken in here: asked for a
        signed cookie this instance does not know (rare: only a session started elsewhere
        before its event arrived)."""
        if not self.connected or sid in self.admin.revoked:
            return False
        try:
            row = (await self.backend.hmget("sessions", [sid]))[0]
        except BackendDown as e:
            self._down(e)
            return False
        if row is None or json.loads(row)[1] < self.admin.revoked_before:
            return False
        await self.app.sessions.adopt(*json.loads(row))
        return sid in self.app.sessions.active

    async def claim_probes(self, keys: list[KeyState]) -> list[KeyState]:
        """The keys this instance probes this health interval: those whose lease for the
        interval it wins, so the cluster probes each key once per interval. A lease lasts two
        intervals and names the interval, so a prober that dies leaves the next interval's
        leases free (failover). With the backend down, every key is probed here."""
        if not self.connected or not keys:
            return keys
        interval = self.app.config.health_interval
        slot = int(time.time() // interval)
        names = [f"probe:{slot}:{ks.id}" for ks in keys]
        try:
            won = await self.backend.claim(names, self.origin, 2 * interval)
        except BackendDown as e:
            self._down(e)
            return keys
        return [ks for ks, mine in zip(keys, won, strict=True) if mine]


def keep_secret(data_dir: str, value: str) -> None:
    """Replace DATA_DIR's session secret (mode 0600, written whole then renamed)."""
    path = os.path.join(data_dir, SECRET_FILE)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
