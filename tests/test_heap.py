"""``heap.tune_heap``: libcurl's 16 KB upload buffer per transfer is mmap'd (zero pages, only
the page the request fills becomes resident), Tornado's per-read buffer is not (an mmap and
munmap per socket read). Checked in a fresh interpreter, on glibc's own record of each block:
the IS_MMAPPED bit of the size word in front of it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

PROBE = textwrap.dedent(
    """
    import ctypes, json
    from orpoll.heap import tune_heap
    from orpoll.server import READ_CHUNK_BYTES

    libc = ctypes.CDLL(None)
    libc.calloc.restype = libc.malloc.restype = ctypes.c_void_p
    libc.calloc.argtypes = (ctypes.c_size_t, ctypes.c_size_t)
    libc.malloc.argtypes = (ctypes.c_size_t,)
    WORD = ctypes.sizeof(ctypes.c_size_t)

    def mmapped(p):
        return bool(ctypes.c_size_t.from_address(p - WORD).value & 2)

    def blocks(n=500):  # how many of n blocks of each kind are mmap'd, all held as in a burst
        return {
            # libcurl's bufq chunk: a small header, then UPLOAD_BUFFERSIZE (16 KB) bytes.
            "curl_upload": sum(mmapped(libc.calloc(1, 16384 + 4 * WORD)) for _ in range(n)),
            # Tornado's bytearray(read_chunk_size), one byte more for its NUL.
            "tornado_read": sum(mmapped(libc.malloc(READ_CHUNK_BYTES + 1)) for _ in range(n)),
        }

    before = blocks()
    print(json.dumps({"before": before, "tuned": tune_heap(), "after": blocks()}))
    """
)


def test_curl_upload_buffers_are_mmapped_and_socket_reads_are_not():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["before"] == {"curl_upload": 0, "tornado_read": 0}  # glibc's default: the heap
    assert got["tuned"] is True
    # glibc serves a block from free heap space first and mmaps only when the heap would
    # have to grow: a few of the first blocks still fit in what the heap had spare.
    assert got["after"]["curl_upload"] >= 450
    assert got["after"]["tornado_read"] == 0
