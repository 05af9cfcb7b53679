"""The operator limits glibc's malloc arenas at start: threads started later share two, where
glibc would give a 2-core machine up to 16 (each keeping what was freed in it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from ocireg.allocator import worth_trimming

# Eight threads allocating and freeing at once, then glibc's own count of its arenas.
CHILD = """
import ctypes, json, re, sys, tempfile, threading
from ocireg.allocator import limit_arenas
limited = limit_arenas() if sys.argv[1] == "limit" else None
start = threading.Barrier(8)
def churn():
    start.wait()
    for _ in range(2000):
        blocks = [bytearray(700) for _ in range(50)]  # past pymalloc's 512 bytes: malloc's
        del blocks
threads = [threading.Thread(target=churn) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
with tempfile.NamedTemporaryFile("r") as out:
    handle = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, handle)
    libc.fclose(handle)
    arenas = len(re.findall(r'<heap nr="', out.read()))
print(json.dumps({"limited": limited, "arenas": arenas}))
"""


def _child(code: str, *args: str, **env: str) -> dict[str, Any]:
    """What a fresh interpreter running ``code`` prints as JSON (no arena limit inherited)."""
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _arenas(mode: str, **env: str) -> dict[str, Any]:
    return _child(CHILD, mode, **env)


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc's allocator",
)


def test_threads_started_after_the_limit_share_two_arenas() -> None:
    assert _arenas("plain")["arenas"] > 2  # what glibc does on its own: an arena per thread
    limited = _arenas("limit")
    assert limited["limited"] is True
    assert limited["arenas"] <= 2


def test_an_arena_limit_in_the_environment_is_left_as_the_user_set_it() -> None:
    chosen = _arenas("limit", MALLOC_ARENA_MAX="4")
    assert chosen["limited"] is False
    assert chosen["arenas"] <= 4


# A burst's leftovers: 40 MB in 1 KB blocks (malloc's, past pymalloc's 512 bytes), every tenth
# kept, so the free memory sits between live blocks, not at the top of the heap where glibc
# gives it back by itself. Then one look of the trimmer.
TRIM_CHILD = """
import json, sys, time
from pathlib import Path
from ocireg.allocator import Trimmer
def rss():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(l for l in status if l.startswith("VmRSS")).split()[1]) * 1024
blocks = [bytearray(1000) for _ in range(40_000)]
kept = blocks[::10]
del blocks
trimmer = Trimmer(threshold=int(sys.argv[1]), every=3600)
before, free = rss(), trimmer.free_bytes()
if sys.argv[2] == "now":
    trimmed = trimmer.trim()
else:  # as the operator runs it: its thread, told that a run ended
    trimmer.start().soon()
    time.sleep(1)
    trimmed = 0
print(json.dumps({"free": free, "trimmed": trimmed, "given_back": before - rss()}))
"""


def _trim(threshold: int, when: str = "now") -> dict[str, Any]:
    return _child(TRIM_CHILD, str(threshold), when)


def test_memory_freed_between_live_blocks_goes_back_to_the_system() -> None:
    result = _trim(threshold=2 << 20)
    assert result["free"] > 30_000_000
    assert result["trimmed"] == result["free"]
    # Only whole pages come back: about 2 of the 9 KB between two kept blocks.
    assert result["given_back"] > 10_000_000


def test_too_little_free_is_left_alone() -> None:
    result = _trim(threshold=1 << 40)
    assert result["trimmed"] == 0
    assert result["given_back"] < 1_000_000


def test_a_run_that_ended_is_followed_by_a_trim_without_waiting_for_the_half_minute() -> None:
    result = _trim(threshold=2 << 20, when="soon")
    assert result["given_back"] > 10_000_000


def test_a_trim_is_not_repeated_until_more_is_freed() -> None:
    assert worth_trimming(40 << 20, baseline=0)
    # Trimmed at 40 MiB free: glibc still counts those chunks free.
    assert not worth_trimming(41 << 20, baseline=40 << 20)
    # Reused down to 10 MiB (pages touched again), then freed again.
    assert worth_trimming(13 << 20, baseline=10 << 20)
