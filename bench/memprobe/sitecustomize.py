"""A memory probe for bench/memory_bench.py and bench/scale_probe.py, loaded into the
operator's interpreter only when the benchmark puts this directory on PYTHONPATH (never part
of the product).

On SIGUSR1 it writes one JSON file to $OCIREG_MEMPROBE_DIR/probe-<n>.json: VmRSS and
/proc/self/smaps_rollup, the thread count, the live objects per type after a full collection,
tracemalloc's per-line totals when tracing (PYTHONTRACEMALLOC=1) with a snapshot kept for
diffing, glibc's malloc_info (its arenas and the free memory they hold), and VmRSS again
after malloc_trim(0): what the allocator holds that nothing uses. The handler runs on the main
thread (kopf's event loop), which stops for the time it takes; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import re
import signal
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

_OUT = os.environ.get("OCIREG_MEMPROBE_DIR")
_count = 0


def _status() -> dict[str, int]:
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            found[key] = int(value.split()[0])
    return found


def _rollup() -> dict[str, int]:
    found = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            found[key] = int(value.split()[0])
    return found


def _malloc_info(libc: Any, path: Path) -> dict[str, Any]:
    """glibc's malloc_info: arenas, and per arena the bytes in use and free (its XML, summed)."""
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    handle = libc.fopen(str(path).encode(), b"w")
    libc.malloc_info(0, handle)
    libc.fclose(handle)
    text = path.read_text()
    heaps = re.findall(r'<heap nr="(\d+)">(.*?)</heap>', text, re.S)
    arenas = []
    for number, body in heaps:
        free = sum(
            int(v)
            for v in re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"', body)
        )
        system = re.search(r'<system type="current" size="(\d+)"', body)
        arenas.append(
            {"heap": int(number), "free": free, "system": int(system.group(1)) if system else 0}
        )
    return {
        "arenas": len(arenas),
        "system_bytes": sum(a["system"] for a in arenas),
        "free_bytes": sum(a["free"] for a in arenas),
        "per_arena": arenas,
    }


def _mappings() -> dict[str, int]:
    """Resident kB by kind of mapping (/proc/self/smaps): thread stacks (anonymous, 8 MiB,
    glibc's default), Python's 1 MiB arenas, glibc's heaps, other anonymous memory, files."""
    found: Counter[str] = Counter()
    kind = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            size, path = end - start, fields[5] if len(fields) > 5 else ""
            if path == "[heap]":
                kind = "glibc main heap"
            elif path.startswith("/"):
                kind = "file " + path
            elif path:
                kind = path
            elif size == 8 << 20:
                kind = "thread stacks"
            elif size == 1 << 20:
                kind = "pymalloc arenas"
            elif size == 64 << 20 or size == 128 << 20:
                kind = "glibc thread heaps"
            else:
                kind = "other anonymous"
        elif fields and fields[0] == "Rss:":
            found[kind] += int(fields[1])
    files = {k: v for k, v in found.items() if k.startswith("file ")}
    kept = dict(sorted(files.items(), key=lambda kv: -kv[1])[:25])
    rest = {k: v for k, v in found.items() if not k.startswith("file ")}
    return {**rest, "files": sum(files.values()), **kept}


def _pymalloc(path: Path) -> dict[str, int]:
    """Python's own allocator (sys._debugmallocstats, which writes to C's stderr): its arenas
    of 256 KiB and the bytes in blocks in use, free in used pools, and in empty pools."""
    import sys

    saved = os.dup(2)
    with open(path, "w") as file:
        os.dup2(file.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(
            r"^(# arenas allocated current|# arenas highwater mark|"
            r"# bytes in allocated blocks|# bytes in available blocks|"
            r"\d+ unused pools \* \d+ bytes|# bytes lost to pool headers|"
            r"# bytes lost to quantization|Total)\s*=\s*([\d,]+)",
            line,
        )
        if match:
            key = re.sub(r"^\d+ unused pools.*", "unused pools bytes", match[1]).lstrip("# ")
            found.setdefault(key, int(match[2].replace(",", "")))
    return found


def _probe(_signum: int, _frame: Any) -> None:
    global _count
    _count += 1
    try:
        _measure()
    except Exception as error:  # said in the file the benchmark waits for
        Path(_OUT or ".", f"probe-{_count}.json").write_text(json.dumps({"error": repr(error)}))


def _measure() -> None:
    started = time.monotonic()
    out = Path(_OUT or ".")
    result: dict[str, Any] = {"status_kb": _status(), "smaps_rollup_kb": _rollup()}
    result["threads"] = sorted(t.name for t in threading.enumerate())
    gc.collect()
    types = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
    result["gc_objects"] = sum(types.values())
    result["gc_types"] = dict(types.most_common(400))
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        snapshot.dump(str(out / f"snapshot-{_count}.tracemalloc"))
        result["traced_bytes"] = tracemalloc.get_traced_memory()[0]
    with contextlib.suppress(Exception):
        result["pymalloc"] = _pymalloc(out / f"pymalloc-{_count}.txt")
    libc = ctypes.CDLL("libc.so.6")
    with contextlib.suppress(Exception):
        result["malloc_info"] = _malloc_info(libc, out / f"malloc-{_count}.xml")
    result["mappings_kb"] = _mappings()
    result["status_kb_before_trim"] = _status()
    libc.malloc_trim(0)
    result["status_kb_after_trim"] = _status()
    result["mappings_kb_after_trim"] = _mappings()
    result["probe_seconds"] = time.monotonic() - started
    (out / f"probe-{_count}.json").write_text(json.dumps(result, indent=1))


if _OUT:
    signal.signal(signal.SIGUSR1, _probe)
