"""The C heap (glibc's malloc) under thousands of streams: where big blocks come from during a
burst, and handing freed memory back after it. On another C library (musl) both do nothing."""

from __future__ import annotations

import ctypes

# During a burst, blocks of this many bytes or more that free heap space cannot serve are
# mmap'd instead of growing the heap (in a burst, nearly all of them). libcurl keeps an
# upload buffer (its minimum, UPLOAD_BUFFERSIZE) per transfer, calloc'd. From the heap, calloc
# zeroes all of it, so all of it is resident; an mmap'd block is zero already, and only the
# page the request fills is touched.
BURST_MMAP_THRESHOLD = 16 * 1024 + 1
# After a burst: where glibc's own sliding threshold ends up (its ceiling on 64-bit, and the
# trim threshold at twice that, as glibc sets them), so request bodies and answers are served
# from the heap again. A fixed low threshold costs an mmap, page faults and a munmap per large
# block, such as a request body being joined and parsed.
CALM_MMAP_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_bursts = [0]  # how many curl pools are in a burst now (one in production: one app)


def _libc(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def in_burst() -> bool:
    return _bursts[0] > 0


def burst(on: bool) -> bool:
    """A curl pool enters (``on``) or leaves a burst; False where there is no mallopt.

    ``upstream.CurlPool`` enters when it opens a curl shard past the first (more than 256
    transfers at once) and leaves when the last of those closes: the upload buffers of those
    shards' handles are allocated in between and kept until the handles close. Outside bursts
    glibc's defaults hold until the first one, ``CALM_MMAP_THRESHOLD`` after it (mallopt turns
    glibc's sliding threshold off for good)."""
    was = in_burst()
    _bursts[0] = max(0, _bursts[0] + (1 if on else -1))
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    if in_burst() == was:
        return True
    if on:
        return bool(mallopt(_M_MMAP_THRESHOLD, BURST_MMAP_THRESHOLD))
    calm = mallopt(_M_MMAP_THRESHOLD, CALM_MMAP_THRESHOLD)
    return bool(mallopt(_M_TRIM_THRESHOLD, 2 * CALM_MMAP_THRESHOLD) and calm)


def release_heap() -> None:
    """Hand memory that is free but kept by the C heap back to the system (glibc's
    malloc_trim). After a burst of thousands of streams, glibc keeps much of the freed
    memory otherwise."""
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)
