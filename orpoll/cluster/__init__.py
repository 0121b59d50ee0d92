"""One key pool shared by several orpoll processes or instances: Redis (REDIS_URL) between
machines, or an SQLite file in DATA_DIR between the workers of one machine (ORPOLL_WORKERS).

``open_cluster`` picks the backend; with neither, the app keeps a NoCluster and nothing of
this package runs.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..values import ConfigError
from .node import Cluster, NoCluster

if TYPE_CHECKING:
    from ..app import OrpollApp

__all__ = ["Cluster", "NoCluster", "open_cluster"]


def workers(environ: Mapping[str, str]) -> int:
    """ORPOLL_WORKERS, set by the supervisor that runs several workers (1 when unset)."""
    try:
        return int(environ.get("ORPOLL_WORKERS", "") or 1)
    except ValueError:
        return 1


def check_url(url: str) -> None:
    """ConfigError unless REDIS_URL is empty or a Redis URL (checked before logging starts, so
    a typo is the one-line start-up error; the message never repeats the URL's password)."""
    if url and urllib.parse.urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("REDIS_URL: expected a redis://, rediss:// or unix:// URL")


def open_cluster(app: OrpollApp, environ: Mapping[str, str]) -> NoCluster:
    """The app's cluster: Redis when REDIS_URL is set, the shared SQLite file when workers
    run on one machine without it, else NoCluster."""
    url = app.config.redis_url
    if url:
        from .rediskv import RedisBackend

        try:
            return Cluster(app, RedisBackend(url))
        except ValueError as e:  # redis-py's verdict on a malformed URL
            raise ConfigError(f"REDIS_URL: {e}") from None
    if workers(environ) > 1:
        from .sqlitekv import LocalBackend

        return Cluster(app, LocalBackend(app.config.data_dir))
    return NoCluster()
