"""Process-wide settings that entry points (the CLI, apps) may apply; importing fastadapt applies none.

:func:`keep_freed_memory` asks glibc to keep freed memory mapped for reuse, so that a meta-update does not
fault its large activation buffers back page by page every step (measured in benchmarks/README.md,
proposal A). The ``fastadapt`` command applies it when ``run.keep_freed_memory`` is true and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
KEEP_BYTES = 1 << 30  # buffers up to 1 GiB come from the heap; up to 1 GiB of freed heap stays mapped


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (process-wide); True if it accepted both settings.

    glibc serves buffers above its mmap threshold with fresh ``mmap`` calls, returns them with ``munmap`` and
    trims the heap; raising both thresholds keeps that memory mapped (faster steps, a higher peak resident
    memory). Elsewhere than glibc/Linux it does nothing and returns False.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
