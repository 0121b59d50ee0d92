"""``heap.burst``: while a curl pool runs more than one shard, libcurl's 16 KB upload buffer per
transfer is mmap'd (zero pages: only the page the request fills becomes resident) and
Tornado's per-read buffer is not (an mmap and munmap per socket read); after the burst, large
blocks (request bodies) come from the heap again. Checked in a fresh interpreter, on glibc's
own record of each block: the IS_MMAPPED bit of the size word in front of it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orpoll.fast import heap

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

PROBE = textwrap.dedent(
    """
    import ctypes, json
    from orpoll.fast import heap
    from orpoll.fast.connections import READ_CHUNK_BYTES

    libc = ctypes.CDLL(None)
    libc.calloc.restype = libc.malloc.restype = ctypes.c_void_p
    libc.calloc.argtypes = (ctypes.c_size_t, ctypes.c_size_t)
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    WORD = ctypes.sizeof(ctypes.c_size_t)

    def mmapped(p):
        return bool(ctypes.c_size_t.from_address(p - WORD).value & 2)

    def blocks(n=500):  # how many of n blocks of each kind are mmap'd, all held as in a burst
        return {
            # libcurl's bufq chunk: a small header, then UPLOAD_BUFFERSIZE (16 KB) bytes.
            "curl_upload": sum(mmapped(libc.calloc(1, 16384 + 4 * WORD)) for _ in range(n)),
            # Tornado's bytearray(read_chunk_size), one byte more for its NUL.
            "tornado_read": sum(mmapped(libc.malloc(READ_CHUNK_BYTES + 1)) for _ in range(n)),
            # A 200 KB request body, freed and allocated again.
            "body": sum(mmapped(p) for p in bodies(n // 10)),
        }

    def bodies(n):
        out = []
        for _ in range(n):
            p = libc.malloc(200_000)
            out.append(p)
            libc.free(libc.malloc(200_000))
        return out

    out = {"before": blocks()}
    out["entered"] = heap.burst(True)
    out["during"] = blocks()
    out["left"] = heap.burst(False)
    out["after"] = blocks()
    print(json.dumps(out))
    """
)


def test_curl_upload_buffers_are_mmapped_in_a_burst_only():
    got = json.loads(
        subprocess.run(
            [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    )
    assert got["before"]["curl_upload"] == got["before"]["tornado_read"] == 0  # glibc's default
    assert got["entered"] is got["left"] is True
    # glibc serves a block from free heap space first and mmaps only when the heap would
    # have to grow: a few of the first blocks still fit in what the heap had spare.
    assert got["during"]["curl_upload"] >= 450
    assert got["during"]["tornado_read"] == 0
    assert got["during"]["body"] == 50  # the price, in a burst only
    assert got["after"] == {"curl_upload": 0, "tornado_read": 0, "body": 0}


def test_bursts_of_two_pools_overlap():
    """The threshold follows the pools in a burst, not the last call (tests run many apps)."""
    assert not heap.in_burst()
    heap.burst(True)
    heap.burst(True)
    heap.burst(False)
    assert heap.in_burst()
    heap.burst(False)
    assert not heap.in_burst()
