"""Request header blocks parsed in two regular-expression passes, with Tornado's result.

``tornado.httputil.HTTPHeaders.parse`` checks each line on its own, the value with a pattern
that alternates per character, and builds the headers one ``add`` at a time: a real share of
a short request's CPU. Here one pattern checks the whole block and another splits it. A block
the first does not accept (a malformed or folded line, a control character, a line without
its end) goes to Tornado's own parse, so every error and odd case is Tornado's;
``tests/fast/test_headers.py`` holds the two to the same result.
"""

from __future__ import annotations

import re

from tornado import http1connection, httputil

from ..limits import MAX_REQUEST_LINE_BYTES, line_too_long

# RFC 9110: a field name is a token; a value is visible characters (obs-text included) with
# spaces and tabs inside, the ones around it stripped. As tornado.httputil._ABNF.
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_VCHAR = r"\x21-\x7e\x80-\xff"
_LINE = rf"[{_TCHAR}]+:[ \t]*(?:[{_VCHAR}][{_VCHAR} \t]*)?\r?\n"
_BLOCK = re.compile(rf"(?:{_LINE}|\r?\n)*")  # Tornado skips empty lines anywhere
_PAIR = re.compile(rf"([{_TCHAR}]+):[ \t]*((?:[{_VCHAR}][{_VCHAR} \t]*)?)\r?\n")
_normalize = httputil._normalize_header  # Tornado's own Http-Header-Case, cached


def parse(block: str) -> httputil.HTTPHeaders:
    """``HTTPHeaders.parse(block)``: the same headers, or the same error."""
    if _BLOCK.fullmatch(block) is None:
        return httputil.HTTPHeaders.parse(block)
    headers = httputil.HTTPHeaders()
    # What HTTPHeaders.add does per line, once the block is known to be well formed.
    as_list, combined = headers._as_list, headers._combined_cache
    for name, value in _PAIR.findall(block):
        name, value = _normalize(name), value.rstrip(" \t")
        values = as_list.get(name)
        if values is None:
            as_list[name] = [value]
            combined[name] = value
        else:
            values.append(value)
            combined.pop(name, None)
    return headers


class HTTP1Connection(http1connection.HTTP1Connection):
    """Tornado's server-side connection, reading the request's headers with ``parse``, and
    refusing a request line over MAX_REQUEST_LINE_BYTES (``limits.RequestTooLarge``)."""

    seen_at = 0.0  # monotonic time the server's sweep first saw this request being read

    def _parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        # As Tornado's, but for the request line's limit and the last call.
        data_str = data.decode("latin1").lstrip("\r\n")
        eol = data_str.find("\n")
        start_line = data_str[:eol].rstrip("\r")
        if len(start_line) > MAX_REQUEST_LINE_BYTES:
            raise line_too_long()
        return start_line, parse(data_str[eol:])
