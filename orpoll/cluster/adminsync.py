"""The admin's part of the cluster: settings edited in the dashboard, the admin password, admin
sessions and the login throttle, the same on every instance.

Settings and the password merge by a revision time kept beside them (the newer wins); sessions
are a set in the snapshot, so a logout or a password change on one instance ends them on all;
failed logins are counted on every instance as events.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..overlay import overlay_settings
from .backend import Backend

if TYPE_CHECKING:
    from ..app import OrpollApp
    from ..auth import Session

log = logging.getLogger("orpoll.cluster")
Op = tuple[str, Any]


class AdminSync:
    def __init__(self, app: OrpollApp, backend: Backend, origin: str) -> None:
        self.app, self.backend, self.origin = app, backend, origin
        self.out_settings = self.out_password = False
        self.out_sessions: list[Op] = []  # session changes in order (an end after a start)
        self.out_logins: list[tuple[str, bool]] = []
        self.revoked: set[str] = set()  # sessions ended (here or elsewhere) since start
        self.revoked_before = 0.0  # every session created before this was ended
        # The settings revision this process applies (workers sharing a DATA_DIR share the
        # store, so the store's revision may be another worker's and not yet applied here).
        self.settings_rev = float(app.store.get_meta("settings_rev") or 0)

    @property
    def pending(self) -> bool:
        return bool(self.out_settings or self.out_password or self.out_sessions or self.out_logins)

    def _rev(self, name: str) -> float:
        return float(self.app.store.get_meta(name) or 0)

    # ---- local changes ---------------------------------------------------------------------

    async def settings_saved(self) -> None:
        store, self.settings_rev = self.app.store, time.time()
        await store.run(store.set_meta, "settings_rev", repr(self.settings_rev))
        self.out_settings = True

    async def password_changed(self) -> None:
        store = self.app.store
        await store.run(store.set_meta, "password_rev", repr(time.time()))
        self.out_password = True

    def session(self, what: str, arg: Any) -> None:
        if what == "revoke_all":
            arg = time.time()  # the sessions it ends are those created before
        self.out_sessions.append((what, arg))
        self._ended(what, arg)

    def _ended(self, what: str, arg: Any) -> None:
        """Remember ended sessions (``arg``: the id, or the time of a revoke_all): a backend
        restored from an older snapshot must not bring them back (see pull_sessions)."""
        if what == "revoke":
            self.revoked.add(arg)
        elif what == "revoke_all":
            self.revoked_before = max(self.revoked_before, arg)

    def login(self, addr: str, ok: bool) -> None:
        self.out_logins.append((addr, ok))

    # ---- publishing ------------------------------------------------------------------------

    async def flush(self) -> None:
        """Publish what is queued; what failed (BackendDown) stays queued."""
        store, b = self.app.store, self.backend
        if self.out_settings:
            self.out_settings = False  # cleared first: an edit made meanwhile queues again
            try:
                values = await store.run(store.load_settings)
                meta = {"settings_rev": repr(await store.run(self._rev, "settings_rev"))}
                await b.commit(
                    self._event("settings"),
                    drop={"settings": None},
                    put={"settings": values, "meta": meta},
                )
            except BaseException:
                self.out_settings = True
                raise
        if self.out_password and not self.app.password.from_env:
            self.out_password = False
            try:
                # From the store, not memory: a worker sharing it may have changed it just now.
                stored = await store.run(store.get_meta, "admin_password")
                rev = await store.run(self._rev, "password_rev")
                meta = {"admin_password": stored or "", "password_rev": repr(rev)}
                await b.commit(self._event("password"), put={"meta": meta})
            except BaseException:
                self.out_password = True
                raise
        while self.out_sessions:
            await self._publish_session(*self.out_sessions[0])
            self.out_sessions.pop(0)
        while self.out_logins:
            addr, ok = self.out_logins[0]
            await b.commit({**self._event("login"), "addr": addr, "ok": ok})
            self.out_logins.pop(0)

    async def _publish_session(self, what: str, arg: Any) -> None:
        b = self.backend
        if what == "add":
            s: Session = arg
            row = [s.sid, s.created, s.expires, s.addr]
            await b.commit(
                {**self._event("session"), "s": row}, put={"sessions": {s.sid: json.dumps(row)}}
            )
        elif what == "revoke":
            await b.commit({**self._event("revoke"), "sid": arg}, drop={"sessions": [arg]})
        else:
            await b.commit({**self._event("revoke_all"), "at": arg}, drop={"sessions": None})

    def _event(self, kind: str) -> dict[str, Any]:
        return {"o": self.origin, "t": kind}

    # ---- other instances' changes ----------------------------------------------------------

    async def apply(self, event: dict[str, Any]) -> None:
        kind, app = event["t"], self.app
        if kind == "settings":
            await self.pull_settings()
        elif kind == "password":
            await self.pull_password()
        elif kind == "session":
            await app.sessions.adopt(*event["s"])
        elif kind == "revoke":
            self._ended("revoke", event["sid"])
            await app.sessions.drop(event["sid"])
        elif kind == "revoke_all":
            self._ended("revoke_all", event["at"])
            await app.sessions.drop(None)
        elif kind == "login":
            throttle = app.login_throttle
            if event["ok"]:
                throttle.succeeded(event["addr"], shared=True)
            else:
                throttle.failed(event["addr"], shared=True)

    async def pull_settings(self) -> None:
        store, b = self.app.store, self.backend
        theirs = float((await b.hmget("meta", ["settings_rev"]))[0] or 0)
        if await store.run(self._rev, "settings_rev") > theirs:
            self.out_settings = True
            return
        if theirs <= self.settings_rev:
            return
        remote = await b.hgetall("settings")
        local = await store.run(store.load_settings)
        diff = {n: remote.get(n) for n in set(remote) | set(local) if remote.get(n) != local.get(n)}

        def save() -> None:
            store.save_settings(diff)
            store.set_meta("settings_rev", repr(theirs))

        await store.run(save)
        self.settings_rev = theirs
        self.app.apply_settings(overlay_settings(self.app.env_config, remote))
        if diff:
            log.info("settings changed on another instance: %s", ", ".join(sorted(diff)))

    async def pull_password(self) -> None:
        password, store = self.app.password, self.app.store
        if password.from_env:
            return
        got = await self.backend.hmget("meta", ["admin_password", "password_rev"])
        mine = await store.run(self._rev, "password_rev")
        if got[0] is None:
            self.out_password = bool(password.hash)
            return
        theirs = float(got[1] or 0)
        if mine > theirs:
            self.out_password = True
        elif got[0] != password.hash:  # newer, or both first generated: the shared one wins

            def save() -> None:
                store.set_meta("admin_password", got[0] or "")
                store.set_meta("password_rev", repr(theirs))

            await store.run(save)
            password.hash = got[0]
            self.app.generated_password = None  # not this instance's to announce

    async def pull_sessions(self, union: bool) -> None:
        """Make the local sessions the snapshot's; with ``union`` (the backend may have lost
        what it held) local sessions it lacks are published instead of ended."""
        sessions = self.app.sessions
        # Taken before the read: a session published while it runs is in neither otherwise.
        read_at = sessions.clock()
        queued = {arg.sid for what, arg in self.out_sessions if what == "add"}
        remote = {sid: json.loads(v) for sid, v in (await self.backend.hgetall("sessions")).items()}
        for sid, row in remote.items():
            if sid in self.revoked or row[1] < self.revoked_before:
                self.session("revoke", sid)  # ended: an older snapshot's copy
            elif sid not in sessions.active:
                await sessions.adopt(*row)
        for sid, s in list(sessions.active.items()):
            if sid in remote or sid in queued or s.refreshed >= read_at:
                continue  # published or taken after the snapshot was read
            if union:
                self.session("add", s)
            else:
                await sessions.drop(sid)
