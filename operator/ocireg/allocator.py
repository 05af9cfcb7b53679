"""glibc's allocator, set once when the operator starts.

glibc gives threads their own malloc arenas, up to 8 per core, and each arena keeps what was
freed in it for reuse. The operator's threads (namespace jobs, reconcile pools, watches) mostly
wait on the network, and Python's own allocator serves small objects apart from malloc, so
extra arenas buy little and hold memory: with two, the operator was 3 to 5 MB smaller from
no tenant object to 600 of them (bench/memory_bench.py, docs/performance.md), as setting
MALLOC_ARENA_MAX=2 in its environment made it."""

from __future__ import annotations

import ctypes
import os

# mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """At most ``arenas`` malloc arenas from now on (threads started later share them).
    Whether it was set: not where the C library has no mallopt, nor where MALLOC_ARENA_MAX
    is in the environment (glibc has read it; the operator's user chose)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, arenas))
