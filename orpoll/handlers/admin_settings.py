"""/admin settings and status: the settings page, GET/POST /admin/settings (checked like
start-up config, stored, applied at once) and GET /admin/app-status."""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from typing import Any

import tornado.web

from .. import __version__, errors
from ..config import ENV_FIELDS, FIELDS, ConfigError, Settings
from ..overlay import replace_settings
from .admin import AdminApiHandler, AdminHandler

log = logging.getLogger("orpoll.admin")


class SettingsPageHandler(AdminHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        app = self.application
        self.render_template(
            "settings.html",
            page="settings",
            fields=settings_view(app)["fields"],
            public=effective(app.config),
            password_from_env=app.password.from_env,
        )


def settings_view(app: Any) -> dict[str, Any]:
    """Editable settings: ``settings`` by env name, ``fields`` with help and limits, and the
    original's flat lowercase names (``default_model``, ...)."""
    fields = []
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        if not meta["editable"]:
            continue
        value, env_value = getattr(app.config, f.name), getattr(app.env_config, f.name)
        fields.append(
            {
                "name": meta["env"],
                "value": value,
                "env_value": env_value,
                "default": f.default,
                "overridden": value != env_value,
                "type": type(f.default).__name__,
                "help": meta["help"],
                "min": meta.get("min"),
                "max": meta.get("max"),
                "choices": list(meta["choices"]) if "choices" in meta else None,
            }
        )
    flat = {field["name"].lower(): field["value"] for field in fields}
    return {**flat, "settings": {f["name"]: f["value"] for f in fields}, "fields": fields}


def effective(config: Settings) -> list[tuple[str, str, str]]:
    """Every setting as shown on the settings page: ``(name, value, note)``, where ``note`` is
    the catalogue key of what stands in for the value (secrets only say whether they are set)."""
    rows = []
    for f in dataclasses.fields(Settings):
        value, note = getattr(config, f.name), ""
        if f.metadata["secret"]:
            value, note = "", "settings.secret_set" if value else "settings.secret_unset"
        elif value == "":
            note = "settings.empty"
        rows.append((f.metadata["env"], str(value), note))
    return rows


def env_name(name: str) -> str:
    """The env name of a setting given by env name (any case) or field name."""
    f = ENV_FIELDS.get(name.upper()) or FIELDS.get(name)
    if f is None or not f.metadata["editable"]:
        raise errors.BadRequest(
            f"{name}: not an editable setting", param=name, code="invalid_setting"
        )
    return f.metadata["env"]


class SettingsHandler(AdminApiHandler):
    """GET: editable settings. POST ``{NAME: value, ...}`` (or ``{"settings": {...}}``): checked
    like start-up config, stored, then applied at once; ``null`` returns a setting to its env
    value. All or nothing: one bad value changes nothing."""

    def get(self) -> None:
        self.write_json(settings_view(self.application))

    async def post(self) -> None:
        body = self.json_body()
        given = body["settings"] if isinstance(body.get("settings"), dict) else body
        if not given:
            raise errors.BadRequest("no settings given", code="invalid_setting")
        changes = {env_name(name): value for name, value in given.items()}
        app = self.application
        new = self.changed(app.config, changes)
        stored = {
            name: None if value is None else str(getattr(new, ENV_FIELDS[name].name))
            for name, value in changes.items()
        }
        await app.store.run(app.store.save_settings, stored)
        app.apply_settings(self.changed(app.config, changes))  # current config: edits may race
        await app.cluster.settings_saved()
        log.info("settings changed in the admin: %s", ", ".join(sorted(changes)))
        self.write_json(
            {
                "message": "settings saved and applied",
                "changed": sorted(changes),
                **settings_view(app),
            }
        )

    def changed(self, config: Settings, changes: dict[str, Any]) -> Settings:
        env = self.application.env_config
        for name, value in changes.items():
            if value is None:
                value = getattr(env, ENV_FIELDS[name].name)
            try:
                config = replace_settings(config, {name: value})
            except ConfigError as e:
                raise errors.BadRequest(str(e), param=name, code="invalid_setting") from None
        return config


class AppStatusHandler(AdminApiHandler):
    """GET: uptime, version, keys by state, request counters, effective settings (no secrets)."""

    def get(self) -> None:
        app = self.application
        uptime = time.time() - app.started_at
        self.write_json(
            {
                "version": __version__,
                "python_version": platform.python_version(),
                "start_time": app.started_at,
                "uptime_seconds": round(uptime, 1),
                "keys": app.scheduler.counts(),
                "requests": {**app.traffic.summary(), "inflight": app.inflight},
                "health": app.health.last_sweep,
                "sessions": len(app.sessions.active),
                "admin_password_source": "env" if app.password.from_env else "store",
                "encrypted_at_rest": app.store.sealer is not None,
                "cluster": app.cluster.state(),
                "settings": app.config.public(),
            }
        )


routes = [
    (r"/admin/settings-page", SettingsPageHandler),
    (r"/admin/settings", SettingsHandler),
    (r"/admin/app-status", AppStatusHandler),
]
