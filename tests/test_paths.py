"""Pass-through paths: only ``<upstream>/api/v1/<plain path>`` is ever sent, with a pool key;
a path or query string that cannot be sent is the client's 400, and no key hears of it."""

from __future__ import annotations

import asyncio
import posixpath
from urllib.parse import quote, urlsplit

import pytest
import tornado.web
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httpserver import HTTPServer

from orpoll import errors
from orpoll.paths import check_query, upstream_path
from tests.api_helpers import connect, untouched
from tests.conftest import KEYS, assert_openai_error, bound_port

# ---- the normaliser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,sent",
    [
        ("embeddings", "embeddings"),
        ("audio/voices/v-1", "audio/voices/v-1"),
        ("models/openai/gpt-4o:free/endpoints", "models/openai/gpt-4o:free/endpoints"),
        ("files/file%2Dabc", "files/file-abc"),
        ("a...b/...", "a...b/..."),
    ],
)
def test_plain_paths_are_sent_decoded(raw, sent):
    assert upstream_path(raw) == sent


@pytest.mark.parametrize(
    "raw",
    [
        "..",
        "../_stats",
        "..%2f..%2f_stats",
        "%2e%2e/%2e%2e/_control/defaults",
        "%2E%2E%2F_stats",
        ".%2e/x",
        "a/./b",
        "a/.",
        "..\\_stats",
        "a%5c..%5c..%5cb",
        "%252e%252e%252f_stats",
        "%25252e%25252e/x",
        "%2525252525252e",
        "%00",
        "a%20b",
        "a b",
        "%7f",
        "\x01x",
        "%c3%a9t%c3%a9",
        "\u00e9",
        "%ff",
        "a%zzb",
        "a%",
        "x%3fy=1",
        "x%23frag",
        'x"y',
    ],
)
def test_paths_that_cannot_be_sent_are_400(raw):
    with pytest.raises(errors.BadRequest) as exc:
        upstream_path(raw)
    assert exc.value.status == 400 and exc.value.code == "invalid_path"


@pytest.mark.parametrize("query", ["", "id=gen-123", "a=1&b=%2F%20", "models=a/b:free,c", "x=[1]"])
def test_good_query_strings_pass(query):
    check_query(query)


@pytest.mark.parametrize(
    "query", ["a=%zz", "a=%", "a=\x00", "a=b c", "a=\u00e9", "a=1#x", "a=\x7f"]
)
def test_bad_query_strings_are_400(query):
    with pytest.raises(errors.BadRequest) as exc:
        check_query(query)
    assert exc.value.code == "invalid_query"


def under_api_v1(path: str) -> bool:
    """As a server resolves the URL's path: dot segments, ``\\`` as ``/``, escapes decoded."""
    url = "http://upstream.test/api/v1/" + path
    resolved = posixpath.normpath(urlsplit(url).path.replace("\\", "/"))
    return resolved.startswith("/api/v1/") and ".." not in resolved.split("/")


SEGMENT = st.sampled_from(
    ["..", ".", "", "%2e", "%2E%2e", "%252e", "%2f", "%5c", "\\", "/", "%25", "a", "_stats", "x.y"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(SEGMENT, st.text(max_size=6)), min_size=1, max_size=8))
def test_whatever_is_accepted_stays_under_api_v1(parts):
    raw = "".join(parts)
    try:
        sent = upstream_path(raw)
    except errors.BadRequest:
        return
    assert under_api_v1(sent), (raw, sent)
    assert upstream_path(sent) == sent  # stable: nothing left to decode
    assert quote(sent, safe="/!$&'()*+,;=:@~") == sent  # nothing a URL parser would escape


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=20))
def test_accepted_query_strings_are_valid_urls(query):
    try:
        check_query(query)
    except errors.BadRequest:
        return
    assert "#" not in query and " " not in query
    assert all(0x21 <= ord(c) < 0x7F for c in query)


# ---- through a running server --------------------------------------------------------------------


class Recorder(tornado.web.RequestHandler):
    """Any path at all: records it with the key it came with, answers 200 JSON."""

    def initialize(self, seen: list) -> None:
        self.seen = seen

    def _any(self) -> None:
        self.seen.append((self.request.method, self.request.path, self.request.headers))
        self.finish({"ok": True, "path": self.request.path})

    get = post = delete = put = _any


@pytest.fixture
def seen() -> list:
    return []


@pytest.fixture
def recorder(io_loop, seen, env):
    """An upstream that answers every path; the app under test is pointed at it."""
    sock, port = bound_port()
    server = HTTPServer(tornado.web.Application([(r"/.*", Recorder, {"seen": seen})]))
    server.add_sockets([sock])
    env["OPENROUTER_API_URL"] = f"http://127.0.0.1:{port}/api/v1/chat/completions"
    yield seen
    server.stop()


async def raw_request(base_url: str, target: bytes, method: bytes = b"GET") -> bytes:
    """Send a request line exactly as given (no client library re-escapes it)."""
    reader, writer = await connect(base_url)
    writer.write(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    return head


TRAVERSALS = [
    "/v1/..%2f..%2f_stats",
    "/v1/..%2F..%2F..%2F_stats",
    "/v1/%2e%2e/%2e%2e/_control/defaults",
    "/v1/.%2e/.%2e/_stats",
    "/v1/%252e%252e/%252e%252e/_stats",
    "/v1/..%5c..%5c_stats",
    "/v1/embeddings/..%2f..%2f..%2f_stats",
    "/v1/%2e%2e%2f%2e%2e%2f_stats?x=1",
]


@pytest.mark.parametrize("target", TRAVERSALS)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_traversal_never_leaves_api_v1(recorder, app, base_url, api, target, method):
    head = await raw_request(base_url, target.encode(), method.encode())
    assert head.startswith(b"HTTP/1.1 400"), head
    assert recorder == []  # nothing went upstream, so no key went anywhere
    assert untouched(app)
    resp = await api("/v1/embeddings", {"model": "m", "input": "x"})
    assert resp.code == 200 and recorder[0][1] == "/api/v1/embeddings"


async def test_the_path_sent_is_the_normalised_one(recorder, base_url, api):
    resp = await api("/v1/files/file%2Dabc/content?x=%2F1")
    assert resp.code == 200, resp.body
    method, path, headers = recorder[0]
    assert path == "/api/v1/files/file-abc/content"
    assert headers["Authorization"] in {f"Bearer {k}" for k in KEYS}


UNSENDABLE = [b"/v1/%00", b"/v1/a%20b", b"/v1/%7f", b"/v1/%c3%a9", b"/v1/%01x", b"/v1/x%zz"]


@pytest.mark.parametrize("target", UNSENDABLE)
async def test_unsendable_path_is_400_and_blames_no_key(fake, app, base_url, api, target):
    for _ in range(8):
        head = await raw_request(base_url, target)
        assert head.startswith(b"HTTP/1.1 400"), head
    assert not fake.requests
    assert untouched(app)
    assert app.scheduler.counts()["available"] == len(KEYS)
    assert (await api("/v1/embeddings", {"model": "m", "input": "x"})).code == 200


@pytest.mark.parametrize("query", [b"id=%zz", b"id=%", b"id=\x01", b"id=\x7f", b"id=\xc3\xa9"])
async def test_bad_query_is_400_and_blames_no_key(fake, app, base_url, api, query):
    head = await raw_request(base_url, b"/v1/generation?" + query)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert not fake.requests and untouched(app)
    resp = await api("/v1/generation?id=gen-1")
    assert resp.code == 200


async def test_bad_path_is_an_openai_error(fake, api):
    resp = await api("/v1/..%2f..%2f_stats")
    e = assert_openai_error(resp, 400, "invalid_request_error")
    assert e["code"] == "invalid_path"


async def test_bad_path_is_refused_before_the_body_is_read(fake, base_url):
    """A 20 MB upload to an unsendable path is answered at once, not read first."""
    reader, writer = await connect(base_url)
    writer.write(
        b"POST /v1/%2e%2e/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 20000000\r\n\r\n{"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 400"), head
    assert not fake.requests


@pytest.mark.parametrize(
    "target,status",
    [
        (b"/v1/models?x=%zz&y=%00&z=\xc3\xa9", 200),
        (b"/v1/models?" + b"a" * 4000, 200),
        (b"/v1/models/%00", 404),
        (b"/v1/models/..%2f..%2f_stats", 404),
        (b"/v1/models/%ff", 400),
        (b"/v1/models/openai%2Fgpt-4o?x=%zz", 200),
    ],
)
async def test_models_ignore_queries_and_odd_ids(fake, app, base_url, target, status):
    head = await raw_request(base_url, target)
    assert head.startswith(b"HTTP/1.1 %d" % status), head
    assert fake.models_calls == (1 if status != 400 else 0)
    assert untouched(app)
