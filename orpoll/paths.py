"""Which /v1 pass-through paths and query strings may go upstream, and in what form.

A pool key goes with every pass-through request, so the URL sent must stay below the upstream's
``/api/v1/``: no dot segment however it is escaped, and nothing curl would refuse or rewrite
(a refusal is not the key's fault, and must not be blamed on one).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from . import errors

# A path is sent decoded, so only characters that mean the same in every URL parser: RFC 3986
# unreserved and sub-delims, ":", "@" and "/". No "%" (an escape left over cannot be told from
# one the upstream would decode), "?", "#", "\", spaces, controls or anything beyond ASCII.
_PATH_OK = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]+")
# A query string goes as it came: printable ASCII but "#", and "%" only in a well-formed escape.
_QUERY_OK = re.compile(r'(?:[!"$&-~]|%[0-9A-Fa-f]{2})*')
MAX_DECODES = 4  # "%25252e" needs three; more is an attack, not a client
DOT_SEGMENTS = (".", "..")


def _bad(message: str) -> errors.BadRequest:
    return errors.BadRequest(message, code="invalid_path")


def upstream_path(raw: str) -> str:
    """The path to send below the upstream base for ``raw``, the request's path after
    ``/v1/`` as it came (still escaped).

    It is percent-decoded until stable and ``\\`` read as ``/``; the result is returned, with
    empty segments dropped, when it is plain (see ``_PATH_OK``) and has no dot segment. Raises
    BadRequest otherwise.
    """
    path = raw
    for _ in range(MAX_DECODES):
        decoded = unquote(path, errors="replace")  # invalid UTF-8 becomes U+FFFD: refused below
        if decoded == path:
            break
        path = decoded
    else:
        raise _bad("the path is escaped too many times")
    path = path.replace("\\", "/")
    if not _PATH_OK.fullmatch(path):
        raise _bad("the path holds characters that cannot be sent upstream")
    segments = path.split("/")
    if any(segment in DOT_SEGMENTS for segment in segments):
        raise _bad("the path may not contain '.' or '..' segments")
    if "" in segments:  # "a//b", "/a", "a/": one slash between segments, a trailing one kept
        path = "/".join(filter(None, segments)) + ("/" if path.endswith("/") else "")
        if path in ("", "/"):
            raise _bad("the path is empty")
    return path


def check_query(query: str) -> None:
    """Raises BadRequest unless ``query`` (as it came, without ``?``) can be sent as it is."""
    if not _QUERY_OK.fullmatch(query):
        raise errors.BadRequest(
            "the query string holds characters that cannot be sent upstream (escape them as %XX)",
            code="invalid_query",
        )
