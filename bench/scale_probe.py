"""What the operator's memory holds after a fan-out of the cluster shape.

N namespaces x R ClusterOCIRegistry objects on the real control plane (scale_bench's set-up),
the operator started in-cluster with bench/memprobe loaded; 20 s after every pull secret is
written it is signalled and the probe's JSON (RSS, live objects per type, pymalloc and glibc
figures, RSS after malloc_trim) is copied out, with tracemalloc's snapshot when traced.
``--compare A B`` prints the lines whose live allocations grew from snapshot A to B:

    .venv/bin/python bench/scale_probe.py --namespaces 2000 --tracemalloc 1 --out /tmp/p2k
    .venv/bin/python bench/scale_probe.py --namespaces 5000 --tracemalloc 1 --out /tmp/p5k
    .venv/bin/python bench/scale_probe.py --compare /tmp/p2k/snapshot.tracemalloc \
        /tmp/p5k/snapshot.tracemalloc

Each run takes 4 to 10 minutes on 2 cores (tracemalloc doubles the fan-out). What the 2,000
and 5,000 runs found: docs/performance.md, "Memory per managed Secret".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import time
import tracemalloc
from pathlib import Path

from scale_bench import Bench, Tally, _rss_mb, _wait, shape

PROBE_DIR = Path(__file__).parent / "memprobe"


def compare(before: Path, after: Path, lines: int) -> None:
    first, second = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    total = sum(t.size for t in second.traces) - sum(t.size for t in first.traces)
    print(f"live Python allocations grew by {total / 1e6:.2f} MB")
    for stat in second.compare_to(first, "lineno")[:lines]:
        frame = stat.traceback[0]
        where = f"{frame.filename}:{frame.lineno}"
        print(f"{stat.size_diff / 1e6:8.2f} MB {stat.count_diff:9d}  {where}")


def probe(args: argparse.Namespace) -> None:
    bench = Bench(
        shape(
            "--namespaces", str(args.namespaces), "--registries", str(args.registries),
            "--credential-samples", "0", "--resync", "300", "--in-cluster",
            *(["--tenants"] if args.tenants else []),
        )
    )  # fmt: skip
    probes = bench.workdir / "probe"
    probes.mkdir()
    env = {"PYTHONPATH": str(PROBE_DIR), "OCIREG_MEMPROBE_DIR": str(probes)}
    if args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = str(args.tracemalloc)
    bench.args.env = [f"{name}={value}" for name, value in env.items()]
    try:
        bench.start()
        bench.identity = bench.in_cluster_identity()
        bench.create_namespaces()
        _wait(lambda: bench.default_accounts() >= args.namespaces, 1800, "ServiceAccounts", 2)
        bench.start_operator()
        bench.tally = Tally(bench.api).start()
        fan_out = bench.converge()
        time.sleep(20)  # the last status patches and Events, then quiet
        rss = _rss_mb(bench.pid)
        os.kill(bench.pid, signal.SIGUSR1)
        found = probes / "probe-1.json"
        _wait(found.exists, 300, "the probe's JSON", 1)
        time.sleep(2)  # written in one call, but let it finish
        args.out.mkdir(parents=True, exist_ok=True)
        result = json.loads(found.read_text())
        result["fan_out_s"], result["rss_mb_before_probe"] = fan_out["total_s"], rss
        (args.out / "probe.json").write_text(json.dumps(result, indent=1))
        if args.tracemalloc:
            shutil.copy(probes / "snapshot-1.tracemalloc", args.out / "snapshot.tracemalloc")
        print(f"fan-out {fan_out['total_s']:.1f} s, VmRSS {rss:.1f} MB; written to {args.out}")
    finally:
        bench.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=2000)
    parser.add_argument("--registries", type=int, default=10)
    parser.add_argument("--tenants", action="store_true", help="an OCIRegistry in each namespace")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES")
    parser.add_argument("--out", type=Path, default=Path("scale-probe"))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--lines", type=int, default=15, help="with --compare")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare, args.lines)
    else:
        probe(args)


if __name__ == "__main__":
    main()
