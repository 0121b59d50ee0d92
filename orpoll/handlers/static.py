"""/static: Tornado's StaticFileHandler with the admin's security headers, OpenAI-shaped
errors and a request id for the access line; a path no file can have is a 404."""

from __future__ import annotations

import tornado.web

from .. import errors
from .admin import SECURITY_HEADERS
from .base import BaseHandler


class StaticHandler(BaseHandler, tornado.web.StaticFileHandler):
    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def parse_url_path(self, url_path: str) -> str:
        # The file system cannot name a file with a NUL: os.stat would raise ValueError (a 500).
        if "\x00" in url_path:
            raise errors.NotFound(f"no such file: {url_path!r}", code="unknown_url")
        return super().parse_url_path(url_path)
