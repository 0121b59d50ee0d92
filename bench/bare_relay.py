"""The floor: a bare Tornado + CurlAsyncHTTPClient relay with no features at all.

``python bench/bare_relay.py PORT UPSTREAM_URL [MAX_CLIENTS]`` answers
``POST /v1/chat/completions`` by posting the body to UPSTREAM_URL and returning the answer,
or for a ``"stream":true`` body by passing each chunk on through Tornado's
``streaming_callback`` (write + flush). No keys, no failover, no holding back until the first
event, no checks, no logging, Tornado's curl defaults: what the design costs before any of
orpoll's work. The bench runs it next to orpoll, so orpoll's figures can be read against it on
the same machine, at the same moment.
"""

from __future__ import annotations

import asyncio
import sys

import tornado.httpserver
import tornado.web
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPRequest

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-or-v1-bench"}


class Relay(tornado.web.RequestHandler):
    async def post(self) -> None:
        body = self.request.body
        if b'"stream":true' in body:
            return await self.stream(body)
        req = HTTPRequest(self.settings["upstream"], "POST", HEADERS, body)
        resp = await self.settings["http"].fetch(req, raise_error=False)
        self.set_status(resp.code)
        self.set_header("Content-Type", "application/json")
        self.finish(resp.body)

    async def stream(self, body: bytes) -> None:
        """Tornado's streaming_callback: each chunk written and flushed as it comes."""

        def on_chunk(chunk: bytes) -> None:
            if not self._headers_written:
                self.set_header("Content-Type", "text/event-stream")
            self.write(chunk)
            self.flush()

        req = HTTPRequest(
            self.settings["upstream"], "POST", HEADERS, body, streaming_callback=on_chunk
        )
        await self.settings["http"].fetch(req, raise_error=False)
        self.finish()


async def main(port: int, upstream: str, max_clients: int) -> None:
    http = CurlAsyncHTTPClient(max_clients=max_clients)
    app = tornado.web.Application([(r"/v1/chat/completions", Relay)], upstream=upstream, http=http)
    tornado.httpserver.HTTPServer(app).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if sys.argv[3:] else 1000))
