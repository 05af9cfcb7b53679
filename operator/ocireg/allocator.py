"""glibc's allocator: two arenas, set once when the operator starts, and what it holds freed
given back to the system after a burst of work.

glibc gives threads their own malloc arenas, up to 8 per core, and each arena keeps what was
freed in it for reuse. The operator's threads (namespace jobs, reconcile pools, watches) mostly
wait on the network, and Python's own allocator serves small objects apart from malloc, so
extra arenas buy little and hold memory: with two, the operator was 3 to 5 MB smaller from
no tenant object to 600 of them (bench/memory_bench.py, docs/performance.md), as setting
MALLOC_ARENA_MAX=2 in its environment made it.

A burst (the initial fan-out, a rotation, many tenant objects at start) leaves the arenas
holding what its answers and bodies used: glibc returns only the free top of the main heap by
itself. The process's `Trimmer` (start_trimming) calls malloc_trim, which gives back the free
pages anywhere in every arena, once at least TRIM_FREE_BYTES are free: soon after each
registry object's run (trim_soon), at most every TRIM_GAP_SECONDS, and every half minute
besides. scale_probe.py, in a pod: 15 MB back after a 10,000 x 10 fan-out, 0 to 3.4 MB after
1,000 x 10, 52 MB after 1,000 tenant objects. Nothing here is a library's: the calls are
glibc's own, made through ctypes."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

# mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
ARENAS = 2
# Less than this free is left alone: the next burst reuses it, and each trim walks the heap.
TRIM_FREE_BYTES = 2 << 20
TRIM_EVERY_SECONDS = 30.0
TRIM_GAP_SECONDS = 5.0  # runs come by the thousand in a burst: one trim for many


def _libc() -> Any | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """At most ``arenas`` malloc arenas from now on (threads started later share them).
    Whether it was set: not where the C library has no mallopt, nor where MALLOC_ARENA_MAX
    is in the environment (glibc has read it; the operator's user chose)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, arenas))


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33 and later), every field a size_t."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def worth_trimming(free_bytes: int, baseline: int, threshold: int = TRIM_FREE_BYTES) -> bool:
    """Whether ``threshold`` more bytes are free than at ``baseline``: the least free seen
    since the last trim. A trim leaves its chunks counted free (their pages are given back,
    the chunks stay in glibc's lists), so the count alone would trim again and again."""
    return free_bytes - baseline >= threshold


class Trimmer:
    """Gives back what glibc's arenas hold freed, when there is enough of it (see above)."""

    def __init__(self, every: float = TRIM_EVERY_SECONDS, threshold: int = TRIM_FREE_BYTES):
        self.every, self.threshold = every, threshold
        libc = _libc()
        self._mallinfo2 = getattr(libc, "mallinfo2", None)
        self._malloc_trim = getattr(libc, "malloc_trim", None)
        if self._mallinfo2 is not None:
            self._mallinfo2.restype = _MallInfo2
        if self._malloc_trim is not None:
            self._malloc_trim.argtypes = [ctypes.c_size_t]
        self.stop = threading.Event()
        self._soon = threading.Event()
        self._baseline = 0  # bytes free after the last trim, or fewer since (reused)

    @property
    def available(self) -> bool:
        """glibc 2.33 or later (mallinfo2); elsewhere the trimmer does nothing."""
        return self._mallinfo2 is not None and self._malloc_trim is not None

    def free_bytes(self) -> int:
        """What the arenas hold freed (ordinary and fast bins)."""
        assert self._mallinfo2 is not None
        info = self._mallinfo2()
        return int(info.fordblks)

    def trim(self) -> int:
        """One look: the bytes that were free when it trimmed, else 0."""
        if not self.available:
            return 0
        free = self.free_bytes()
        self._baseline = min(self._baseline, free)
        if not worth_trimming(free, self._baseline, self.threshold):
            return 0
        assert self._malloc_trim is not None
        self._malloc_trim(0)
        self._baseline = free
        log.debug("gave back what glibc held freed (%d bytes free before)", free)
        return free

    def start(self) -> Trimmer:
        if self.available:
            threading.Thread(target=self._run, name="ocireg-trim", daemon=True).start()
        return self

    def soon(self) -> None:
        self._soon.set()

    def _run(self) -> None:
        while not self.stop.is_set():
            self._soon.wait(self.every)
            self._soon.clear()
            if self.stop.is_set():
                return
            self.trim()
            self.stop.wait(TRIM_GAP_SECONDS)


_trimmer: Trimmer | None = None


def start_trimming() -> Trimmer:
    """The process's trimmer (once, at start)."""
    global _trimmer
    _trimmer = Trimmer().start()
    return _trimmer


def trim_soon() -> None:
    """After a piece of work that may have left memory free (nothing without a trimmer)."""
    if _trimmer is not None:
        _trimmer.soon()
