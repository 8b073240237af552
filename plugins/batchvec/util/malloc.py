"""Keep a streaming step's memory flat under glibc.

glibc serves a large allocation with mmap only until the first such block is freed; then
it raises its mmap threshold (up to 32 MB), and later multi-MB buffers (S3 parts, bulk
bodies) come from the heap, which fragments and grows with the input instead of going
back to the OS. Fixing the threshold keeps them mmap'd. Airflow runs each task in its own
process, so this touches only the task that asks for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from malloc.h
DEFAULT_THRESHOLD = 1 << 20

_done = False


def fix_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Once per process; False where the C library is not glibc (musl, macOS): a no-op."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        ok = False
    _done = ok
    if not ok:
        log.debug("mallopt unavailable: large buffers stay with the default allocator policy")
    return ok
