"""Keep freed memory for reuse in a process that trains on CPU (glibc's malloc).

A training step allocates the same large activations again and again (one [tokens, 1536] float32
tensor is ~9 MB). glibc serves blocks over its mmap threshold (128 KiB at first) with fresh
pages from the kernel and returns them on free, so every step pays a page fault per 4 KiB and
the zeroing of each page: in a profile of grouped LoRA training, the first micro batch of each
step ran its elementwise ops 2-3x slower than the next ones. PyTorch's CPU tuning guides
recommend jemalloc or tcmalloc for this; neither can be swapped in once a process runs (they
are preloaded), so this sets glibc's own knobs with mallopt: blocks up to 32 MiB (glibc's
largest mmap threshold) come from the heap, and freed heap memory stays in the process. The
process's resident memory then stays at its peak rather than shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's cap on 64-bit
TOP_PAD = 64 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1  # an int: mallopt takes one


def keep_freed_memory() -> bool:
    """Tune this process's glibc malloc as above; False where there is no glibc (nothing set)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        )
    )
