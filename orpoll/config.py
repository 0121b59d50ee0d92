"""Settings: every option declared once (env name, type, default, help), loaded and validated once.

Nothing else in orpoll reads ``os.environ``; the command line's flags and ``--help`` and the
settings page are all generated from ``Settings`` field metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .values import ConfigError as ConfigError  # raised by load_settings; callers catch it here
from .values import parse_value

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
DAY = 86400


def _opt(
    default: Any, env: str, help: str, *, editable: bool = False, secret: bool = False, **kw: Any
) -> Any:
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
        "uvloop (libuv's loop, in C: less CPU per request) or asyncio (Python's own); "
        "asyncio when uvloop is not installed",
        choices=EVENT_LOOPS,
    )
    fast: bool = _opt(
        True,
        "FAST",
        "orpoll's fast paths (its own HTTP server loop, direct socket writes, curl transfer "
        "pool); 0 = Tornado's and pycurl's public APIs only",
    )
    workers: str = _opt("1", "WORKERS", "processes serving the port (auto = one per core)")
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
    redis_url: str = _opt(
        "", "REDIS_URL", "Redis that instances sharing one key pool use; empty = alone", secret=True
    )
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
    usage_retention_days: int = _opt(
        400,
        "USAGE_RETENTION_DAYS",
        "days the usage totals (per hour and per day) are kept in DATA_DIR/ledger.sqlite3",
        min=1,
        max=100 * 365,
    )
    request_log_retention_days: int = _opt(
        7,
        "REQUEST_LOG_RETENTION_DAYS",
        "days each request's record is kept (the admin's request log)",
        min=1,
        max=100 * 365,
    )
    metrics_token: str = _opt(
        "",
        "METRICS_TOKEN",
        "bearer token for GET /metrics (Prometheus); empty = /metrics answers 404",
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


def load_settings(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Build Settings from an environment mapping; raises ConfigError on a malformed value."""
    values = {}
    for env, f in ENV_FIELDS.items():
        if env in environ and environ[env] != "":
            values[f.name] = parse_value(f, environ[env])
    values.update(overrides)
    return Settings(**values)


def load_dotenv_file(path: str = ".env") -> None:
    """Load ``.env`` into os.environ without overriding variables already set."""
    if os.path.exists(path):
        from dotenv import load_dotenv

        load_dotenv(path, override=False)
