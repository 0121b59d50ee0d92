"""Settings: every option declared once (env name, type, default, help), loaded and validated once.

Nothing else in orpoll reads ``os.environ``; ``--help``, ``.env.example`` and the settings page are
all generated from ``Settings`` field metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LOG_LEVELS = {
    "trace": 5,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
LOG_FORMATS = ("text", "json")
EVENT_LOOPS = ("uvloop", "asyncio")
TYPES = {"int": int, "float": float, "bool": bool, "str": str}
BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}
# Variables of the Go original that mean nothing here; accepted silently.
IGNORED_ENV = ("GIN_MODE",)
DAY = 86400
log = logging.getLogger("orpoll")


class ConfigError(ValueError):
    """A setting has a value it cannot take; the message names the variable."""


def _opt(default: Any, env: str, help: str, *, editable: bool = False, secret: bool = False, **kw):
    meta = {"env": env, "help": help, "editable": editable, "secret": secret, **kw}
    if type(default) in (int, float):
        meta.setdefault("min", 0)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    openrouter_api_keys: str = _opt(
        "",
        "OPENROUTER_API_KEYS",
        "keys as key[:weight], separated by commas or newlines",
        secret=True,
    )
    app_api_key: str = _opt(
        "",
        "APP_API_KEY",
        "client keys for /v1 (comma-separated); empty = /v1 is open",
        secret=True,
    )
    host: str = _opt("0.0.0.0", "HOST", "address to listen on")
    port: int = _opt(8000, "PORT", "HTTP listen port", min=1, max=65535)
    trust_proxy_headers: bool = _opt(
        False,
        "TRUST_PROXY_HEADERS",
        "take the client address and scheme from X-Forwarded-For/X-Real-Ip/X-Forwarded-Proto, "
        "and accept X-Forwarded-Host in the admin's origin check (only behind a reverse proxy "
        "that sets them)",
    )
    public_url: str = _opt(
        "",
        "PUBLIC_URL",
        "the URL browsers use to reach orpoll (https://orpoll.example.com), when it differs "
        "from the Host the server sees: the admin's origin check accepts it, and an https:// "
        "one marks the admin cookie Secure",
        url=True,
    )
    log_level: str = _opt(
        "info", "LOG_LEVEL", "trace, debug, info, warn, error, fatal or panic", choices=LOG_LEVELS
    )
    log_format: str = _opt("text", "LOG_FORMAT", "text or json", choices=LOG_FORMATS)
    event_loop: str = _opt(
        "uvloop",
        "EVENT_LOOP",
        "uvloop (libuv's loop, in C: 5% less CPU per request) or asyncio (Python's own); "
        "asyncio when uvloop is not installed",
        choices=EVENT_LOOPS,
    )
    fast: bool = _opt(
        True,
        "FAST",
        "orpoll's fast paths (its own HTTP server loop, direct socket writes, curl transfer "
        "pool); 0 = Tornado's and pycurl's public APIs only",
    )
    default_model: str = _opt(
        "deepseek/deepseek-chat-v3-0324:free",
        "DEFAULT_MODEL",
        "model used when a request names none",
        editable=True,
    )
    request_timeout: float = _opt(
        180.0,
        "REQUEST_TIMEOUT_SECONDS",
        "longest wait for the upstream's first byte, or silence between chunks (0 = none)",
        editable=True,
        max=DAY,
    )
    first_byte_timeout: float = _opt(
        30.0,
        "FIRST_BYTE_TIMEOUT_SECONDS",
        "a stream attempt that has received no byte at all (not even OpenRouter's keep-alive "
        "comments) this long is abandoned and retried on another key (0 = off)",
        editable=True,
        max=3600,
    )
    stream_keepalive_after: float = _opt(
        10.0,
        "STREAM_KEEPALIVE_AFTER_SECONDS",
        "pass OpenRouter's keep-alive comments on once a stream's first token is this late "
        "(until then they are held back so an early error can still fail over)",
        editable=True,
        max=3600,
    )
    connect_timeout: float = _opt(
        10.0,
        "CONNECT_TIMEOUT_SECONDS",
        "longest wait to connect to the upstream",
        editable=True,
        min=0.1,  # curl reads 0 as its own default of 300 s, not as "no limit"
        max=600,
    )
    upstream_ca_bundle: str = _opt(
        "",
        "UPSTREAM_CA_BUNDLE",
        "PEM file of the CA certificates trusted for the upstream's TLS (a company's "
        "TLS-inspecting proxy); empty = the system's",
        file=True,
    )
    upstream_h2c: bool = _opt(
        False,
        "UPSTREAM_H2C",
        "the upstream at an http:// URL also speaks HTTP/2 without TLS: streams past the "
        "first 256 at once then share its connections instead of opening one each (one that "
        "turns out not to is logged as an error, and HTTP/1.1 used)",
    )
    key_cooldown: float = _opt(
        600.0,
        "KEY_FAILURE_COOLDOWN_SECONDS",
        "base cooldown of a failing key",
        editable=True,
        max=30 * DAY,
    )
    key_max_cooldown: float = _opt(
        3600.0,
        "KEY_MAX_COOLDOWN_SECONDS",
        "cap on a growing cooldown",
        editable=True,
        max=30 * DAY,
    )
    key_credit_cooldown: float = _opt(
        3600.0,
        "KEY_CREDIT_COOLDOWN_SECONDS",
        "cooldown of a key that is out of credit (until a health check shows credit)",
        editable=True,
        max=30 * DAY,
    )
    key_max_failures: int = _opt(
        3,
        "KEY_MAX_CONSECUTIVE_FAILURES",
        "transient failures in a row before a key cools down",
        editable=True,
        min=1,
        max=1000,
    )
    retry_count: int = _opt(
        3,
        "RETRY_WITH_NEW_KEY_COUNT",
        "further keys tried per request after a failure",
        editable=True,
        min=0,
        max=100,
    )
    retry_backoff: float = _opt(
        0.1,
        "RETRY_BACKOFF_SECONDS",
        "pause before retrying after a transient error (x attempt)",
        editable=True,
        max=60,
    )
    health_interval: float = _opt(
        300.0,
        "HEALTH_CHECK_INTERVAL_SECONDS",
        "seconds between health-check sweeps",
        editable=True,
        min=1,
        max=7 * DAY,
    )
    health_rotation: float = _opt(
        1800.0,
        "HEALTH_CHECK_ROTATION_SECONDS",
        "every healthy key is probed at least this often (credit and usage figures)",
        editable=True,
        min=1,
        max=30 * DAY,
    )
    health_concurrency: int = _opt(
        8,
        "HEALTH_CHECK_CONCURRENCY",
        "health probes in flight at once",
        editable=True,
        min=1,
        max=1000,
    )
    http_referer: str = _opt("", "HTTP_REFERER", "HTTP-Referer sent upstream", editable=True)
    x_title: str = _opt("", "X_TITLE", "X-Title sent upstream", editable=True)
    openrouter_api_url: str = _opt(
        "https://openrouter.ai/api/v1/chat/completions",
        "OPENROUTER_API_URL",
        "upstream chat completions URL",
    )
    openrouter_models_url: str = _opt(
        "https://openrouter.ai/api/v1/models", "OPENROUTER_MODELS_URL", "upstream models URL"
    )
    openrouter_key_info_url: str = _opt(
        "", "OPENROUTER_KEY_INFO_URL", "upstream /key URL (default: derived from the API URL)"
    )
    models_cache: float = _opt(
        300.0, "MODELS_CACHE_SECONDS", "how long /v1/models is cached", editable=True, max=DAY
    )
    max_body_bytes: int = _opt(
        32 * 1024 * 1024,
        "MAX_REQUEST_BODY_BYTES",
        "largest accepted request body",
        min=1024,
        max=1 << 30,
    )
    max_backlog_bytes: int = _opt(
        16 * 1024 * 1024,
        "MAX_STREAM_BACKLOG_BYTES",
        "unsent bytes a slow client may hold back before it is dropped",
        min=65536,
        max=1 << 30,
    )
    upstream_max_connections: int = _opt(
        10000,
        "UPSTREAM_MAX_CONNECTIONS",
        "concurrent upstream transfers (the rest queue)",
        min=1,
        max=1_000_000,
    )
    max_concurrent_requests: int = _opt(
        0,
        "MAX_CONCURRENT_REQUESTS",
        "requests handled at once; more get 429 with Retry-After (0 = no limit)",
        editable=True,
        max=1_000_000,
    )
    max_concurrent_per_client: int = _opt(
        0,
        "MAX_CONCURRENT_REQUESTS_PER_CLIENT",
        "requests at once per APP_API_KEY entry; more get 429 with Retry-After (0 = no limit)",
        editable=True,
        max=1_000_000,
    )
    max_sse_event_bytes: int = _opt(
        32 * 1024 * 1024,
        "MAX_SSE_EVENT_BYTES",
        "largest single event of an upstream stream; a larger one ends the stream with an error",
        min=65536,
        max=1 << 30,
    )
    shutdown_grace: float = _opt(
        30.0,
        "SHUTDOWN_GRACE_SECONDS",
        "on SIGTERM, how long requests and streams in flight may take to finish",
        max=3600,
    )
    client_header_timeout: float = _opt(
        30.0,
        "CLIENT_HEADER_TIMEOUT_SECONDS",
        "longest time a client may take to send a request's headers",
        min=1,
        max=3600,
    )
    client_body_timeout: float = _opt(
        60.0,
        "CLIENT_BODY_TIMEOUT_SECONDS",
        "longest silence while a client sends a request body; a stalled upload is cut",
        min=1,
        max=3600,
    )
    client_idle_timeout: float = _opt(
        300.0,
        "CLIENT_IDLE_TIMEOUT_SECONDS",
        "an idle keep-alive client connection is closed after this long",
        min=1,
        max=86400,
    )
    data_dir: str = _opt("./data", "DATA_DIR", "directory of the SQLite database and secrets")
    admin_password: str = _opt(
        "", "ADMIN_PASSWORD", "admin password; empty = generated once and logged", secret=True
    )
    session_secret_key: str = _opt(
        "",
        "SESSION_SECRET_KEY",
        "cookie signing secret; empty = generated once in DATA_DIR",
        secret=True,
    )
    session_lifetime: float = _opt(
        7 * 86400.0,
        "SESSION_LIFETIME_SECONDS",
        "admin session lifetime (sliding)",
        editable=True,
        min=60,
        max=365 * DAY,
    )
    cookie_secure: bool = _opt(
        False, "COOKIE_SECURE", "mark the admin cookie Secure (also automatic under https)"
    )
    encryption_key: str = _opt(
        "",
        "ENCRYPTION_KEY",
        "encrypts keys at rest in the database; empty = stored in clear",
        secret=True,
    )
    login_max_failures: int = _opt(
        5,
        "LOGIN_MAX_FAILURES",
        "failed admin logins per address before throttling",
        editable=True,
        min=1,
        max=1000,
    )

    @property
    def key_info_url(self) -> str:
        """The /api/v1/key URL: explicit, or the chat URL's sibling."""
        if self.openrouter_key_info_url:
            return self.openrouter_key_info_url
        base = self.openrouter_api_url.rsplit("/chat/completions", 1)[0]
        return base + "/key"

    @property
    def upstream_base(self) -> str:
        """Base for pass-through paths: ``.../api/v1``."""
        return self.openrouter_api_url.rsplit("/chat/completions", 1)[0]

    @property
    def log_level_number(self) -> int:
        return LOG_LEVELS[self.log_level]

    def public(self) -> dict[str, Any]:
        """Effective settings without secrets (secrets show whether they are set)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.metadata["env"]] = bool(value) if f.metadata["secret"] else value
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
ENV_FIELDS = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}


def parse_value(f: dataclasses.Field, raw: Any) -> Any:
    """Convert and check one value for field ``f``; raises ConfigError naming the variable."""
    env, meta = f.metadata["env"], f.metadata
    kind = f.type if isinstance(f.type, type) else TYPES.get(f.type, str)
    if kind is bool:
        text = str(raw).strip().lower()
        if text not in BOOLS:
            raise ConfigError(f"{env}={raw!r}: expected true or false")
        return BOOLS[text]
    if kind in (int, float):
        return parse_number(f, kind, raw)
    value = str(raw).strip() if isinstance(raw, str | int | float) else raw
    if not isinstance(value, str):
        raise ConfigError(f"{env}={raw!r}: expected a string")
    if meta.get("file") and value and not os.path.isfile(value):
        raise ConfigError(f"{env}={raw!r}: no such file")
    if meta.get("url") and value:
        check_url(env, value)
    if "choices" in meta:
        value = value.lower()
        if value not in meta["choices"]:
            raise ConfigError(f"{env}={raw!r}: expected one of {', '.join(meta['choices'])}")
    return value


def parse_number(f: dataclasses.Field, kind: type, raw: Any) -> int | float:
    """A finite number within the field's ``min`` and ``max``: a stored or edited value can
    never be one that breaks a timer, a cookie's expiry or a timeout (1e300, inf, NaN)."""
    env, low, high = f.metadata["env"], f.metadata["min"], f.metadata["max"]
    expected = "an integer" if kind is int else "a number"
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ConfigError(f"{env}={raw!r}: expected {expected}")
    number = raw
    try:
        if isinstance(raw, str):  # an integer setting takes digits only ("1e3" is refused)
            number = int(raw.strip()) if kind is int else float(raw.strip())
        value = float(number)
    except (ValueError, OverflowError):
        raise ConfigError(f"{env}={raw!r}: expected {expected}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{env}={raw!r}: must be >= {low} and <= {high}")
    if kind is int:
        if value != int(value):
            raise ConfigError(f"{env}={raw!r}: expected {expected}")
        return int(value)
    return value


def check_url(env: str, value: str) -> None:
    """An http(s) URL with a host (PUBLIC_URL)."""
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{env}={value!r}: expected a URL such as https://orpoll.example.com")


def load_settings(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Build Settings from an environment mapping; raises ConfigError on a malformed value."""
    values = {}
    for env, f in ENV_FIELDS.items():
        if env in environ and environ[env] != "":
            values[f.name] = parse_value(f, environ[env])
    values.update(overrides)
    return Settings(**values)


def replace_settings(current: Settings, changes: Mapping[str, Any]) -> Settings:
    """New Settings with editable fields changed (keys are env names or field names)."""
    values = {}
    for name, raw in changes.items():
        f = ENV_FIELDS.get(name) or FIELDS.get(name)
        if f is None or not f.metadata["editable"]:
            raise ConfigError(f"{name}: not an editable setting")
        values[f.name] = parse_value(f, raw)
    return dataclasses.replace(current, **values)


def overlay_settings(config: Settings, stored: dict[str, str]) -> Settings:
    """``config`` with the admin's stored edits applied (a value no longer valid is skipped)."""
    for name, value in stored.items():
        try:
            config = replace_settings(config, {name: value})
        except ConfigError as e:
            log.error("ignoring a stored setting (the environment's value is used): %s", e)
    return config


def load_dotenv_file(path: str = ".env") -> None:
    """Load ``.env`` into os.environ without overriding variables already set."""
    if os.path.exists(path):
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


def help_text() -> str:
    """The ``--help`` listing: every setting with its default and help."""
    lines = ["Settings (environment variables or .env):", ""]
    for f in dataclasses.fields(Settings):
        default = "(empty)" if f.default == "" else f.default
        lines.append(f"  {f.metadata['env']:<32} {f.metadata['help']} [default: {default}]")
    return "\n".join(lines)


def env_example() -> str:
    """Text of ``.env.example``."""
    out = ["# orpoll settings; every line is optional. Generated from orpoll/config.py."]
    for f in dataclasses.fields(Settings):
        out += ["", f"# {f.metadata['help']}", f"# {f.metadata['env']}={f.default}"]
    return "\n".join(out) + "\n"
