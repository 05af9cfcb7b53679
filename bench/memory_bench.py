"""Memory per tenant object, on the real local control plane: RSS with N and with 2N tenant
`OCIRegistry` objects in one operator process.

    .venv/bin/python bench/memory_bench.py [--tenants 300] [--probe] [--tracemalloc]
                                           [--env MALLOC_ARENA_MAX=2] [--json FILE]

2N tenant namespaces are made first, each with its login Secret and CA ConfigMap (as in
`scale_bench.py --tenants`), plus one ClusterOCIRegistry selecting them all, so that the
namespaces, ServiceAccounts and read Secrets the watches index are the same at every point.
The operator starts (default resync, 300 s: none falls inside the run), and the RSS is read at
three points, each once every object is Ready and the operator has written nothing for 10 s:

  0   before any OCIRegistry (the cluster object and its 2N copies in place);
  N   after N tenants' OCIRegistry objects (each writes one pull secret into its namespace);
  2N  after N more.

Per object: (RSS at 2N - RSS at N) / N, and (RSS at N - RSS at 0) / N. Without --probe nothing
but /proc is read, so the figures are those of the operator as it runs. --probe loads
bench/memprobe/sitecustomize.py into the operator and signals it at each point: it adds the
live objects per type, glibc's arenas and the free memory they hold, and RSS after
malloc_trim(0) (which then changes what the next point starts from); --tracemalloc traces
Python's allocations (which costs memory and time of its own) and prints the lines that grew
most between N and 2N. --env passes a variable to the operator (for allocator trials).
About 4 minutes at the default size on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from ocireg_devenv.operator import OperatorProcess
from scale_bench import (
    CREDS_NS,
    LABEL,
    Bench,
    Tally,
    _metric,
    _parallel,
    _wait,
    shape,
)

PROBE_DIR = Path(__file__).parent / "memprobe"


def _proc(pid: int) -> dict[str, int]:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            status[key] = int(value.split()[0])
    return status


class MemoryBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bench = Bench(
            shape(
                "--tenants", "--namespaces", str(2 * args.tenants), "--registries", "2",
                "--credential-samples", "0", "--resync", "300",
            )
        )  # fmt: skip
        self.probe_dir = self.bench.workdir / "probe"
        self.points: dict[str, dict[str, Any]] = {}

    def start_operator(self) -> None:
        bench = self.bench
        env = dict(item.split("=", 1) for item in self.args.env)
        if self.args.probe or self.args.tracemalloc:
            self.probe_dir.mkdir()
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(PROBE_DIR), os.environ.get("PYTHONPATH")) if p
            )
            env["OCIREG_MEMPROBE_DIR"] = str(self.probe_dir)
        if self.args.tracemalloc:
            env["PYTHONTRACEMALLOC"] = str(self.args.tracemalloc)
        bench.operator = OperatorProcess(
            bench.cluster.admin_kubeconfig,
            bench.workdir,
            (
                "--credentials-namespace", CREDS_NS,
                "--metrics-port", str(bench.metrics_port),
                "--metrics-address", "127.0.0.1",
                "--egress-allowed-cidr", "127.0.0.0/8",
            ),
            env=env,
            name="ocireg",
            verbose=False,
        )  # fmt: skip
        bench.operator.start(timeout=300)

    def settle(self, objects: int) -> None:
        """Every registry object Ready, every pull secret there, 10 s without a write."""
        bench = self.bench
        assert bench.tally is not None
        tally = bench.tally
        copies = 2 * self.args.tenants + objects - 1  # the cluster object's and one per tenant
        tally.wait(lambda: len(tally) >= copies, 600, f"{copies} pull secrets")
        _wait(lambda: self.not_ready(objects) == 0, 600, "every object Ready", 1)
        last, since = _metric(bench.metrics_port, "ocireg_secret_writes_total"), time.monotonic()
        while time.monotonic() - since < 10:
            time.sleep(0.5)
            now = _metric(bench.metrics_port, "ocireg_secret_writes_total")
            if now != last:
                last, since = now, time.monotonic()
        time.sleep(5)  # the last status patches and Events

    def not_ready(self, objects: int) -> int:
        ready = 0
        for plural in ("clusterociregistries", "ociregistries"):
            for item in self.bench.api.items(f"/apis/ocireg.dev/v1alpha1/{plural}"):
                for c in (item.get("status") or {}).get("conditions") or []:
                    if c["type"] == "Ready" and c["status"] == "True":
                        ready += 1
        return objects - ready

    def measure(self, name: str, objects: int) -> None:
        self.settle(objects)
        pid = self.bench.pid
        point: dict[str, Any] = {"objects": objects, "proc_kb": _proc(pid)}
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
        point["smaps_rollup_kb"] = {
            k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in rollup)
        }
        if self.args.probe or self.args.tracemalloc:
            count = len(self.points) + 1
            os.kill(pid, signal.SIGUSR1)
            found = self.probe_dir / f"probe-{count}.json"
            _wait(found.exists, 120, f"the probe's {found.name}", 0.5)
            time.sleep(1)  # written in one call, but let it finish
            point["probe"] = json.loads(found.read_text())
            if "error" in point["probe"]:
                raise RuntimeError(f"the probe failed: {point['probe']['error']}")
        self.points[name] = point
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {objects} objects, "
              f"VmRSS {point['proc_kb']['VmRSS'] / 1024:.1f} MB", flush=True)  # fmt: skip

    def create_tenants(self, names: list[str]) -> None:
        bench = self.bench
        _parallel(
            lambda ns: bench.api.post(
                f"/apis/ocireg.dev/v1alpha1/namespaces/{ns}/ociregistries", bench.tenant_spec(ns)
            ),
            names,
            16,
        )

    def run(self) -> dict[str, Any]:
        bench, n = self.bench, self.args.tenants
        started = time.monotonic()
        bench.start()
        bench.create_namespaces()
        _wait(lambda: bench.default_accounts() >= 2 * n, 900, "default ServiceAccounts", 2)
        self.start_operator()
        bench.tally = Tally(bench.api).start()
        spec = bench.registry_spec(0)
        spec["spec"]["targets"]["namespaceSelector"] = {"matchLabels": LABEL}
        bench.api.post("/apis/ocireg.dev/v1alpha1/clusterociregistries", spec)
        self.measure("0", 1)
        self.create_tenants(bench.names[:n])
        self.measure("N", 1 + n)
        self.create_tenants(bench.names[n:])
        self.measure("2N", 1 + 2 * n)
        return self.report(time.monotonic() - started)

    def report(self, seconds: float) -> dict[str, Any]:
        n = self.args.tenants
        rss = {k: p["proc_kb"]["VmRSS"] for k, p in self.points.items()}
        anon = {k: p["smaps_rollup_kb"].get("Anonymous", 0) for k, p in self.points.items()}
        result: dict[str, Any] = {
            "parameters": {
                "tenants_per_step": n,
                "namespaces": 2 * n,
                "env": self.args.env,
                "probe": self.args.probe,
                "tracemalloc": self.args.tracemalloc,
            },
            "rss_mb": {k: v / 1024 for k, v in rss.items()},
            "per_object_kb": {
                "0_to_N": (rss["N"] - rss["0"]) / n,
                "N_to_2N": (rss["2N"] - rss["N"]) / n,
                "anonymous_N_to_2N": (anon["2N"] - anon["N"]) / n,
            },
            "peak_mb": self.points["2N"]["proc_kb"]["VmHWM"] / 1024,
            "threads": {k: p["proc_kb"]["Threads"] for k, p in self.points.items()},
            "seconds": seconds,
            "points": self.points,
        }
        if self.args.probe or self.args.tracemalloc:
            probes = {k: p["probe"] for k, p in self.points.items()}
            first, second = probes["N"]["gc_types"], probes["2N"]["gc_types"]
            grew = {t: (second.get(t, 0) - first.get(t, 0)) / n for t in second}
            result["gc_objects_per_object"] = (
                probes["2N"]["gc_objects"] - probes["N"]["gc_objects"]
            ) / n
            result["gc_types_per_object"] = dict(
                sorted(((t, g) for t, g in grew.items() if abs(g) >= 0.5), key=lambda kv: -kv[1])
            )
            result["trim_mb"] = {
                k: (p["status_kb_before_trim"]["VmRSS"] - p["status_kb_after_trim"]["VmRSS"]) / 1024
                for k, p in probes.items()
            }
            result["pymalloc_mb"] = {
                k: {
                    "arenas": p["pymalloc"].get("Total", 0) / 2**20,
                    "blocks_in_use": p["pymalloc"].get("bytes in allocated blocks", 0) / 2**20,
                }
                for k, p in probes.items()
                if "pymalloc" in p
            }
            result["malloc"] = {
                k: {
                    "arenas": p["malloc_info"]["arenas"],
                    "system_mb": p["malloc_info"]["system_bytes"] / 2**20,
                    "free_mb": p["malloc_info"]["free_bytes"] / 2**20,
                }
                for k, p in probes.items()
                if "malloc_info" in p
            }
        if self.args.tracemalloc:
            first = tracemalloc.Snapshot.load(str(self.probe_dir / "snapshot-2.tracemalloc"))
            second = tracemalloc.Snapshot.load(str(self.probe_dir / "snapshot-3.tracemalloc"))
            result["traced_per_object_kb"] = (
                (probes["2N"]["traced_bytes"] - probes["N"]["traced_bytes"]) / n / 1024
            )
            grouping = "traceback" if self.args.tracemalloc > 1 else "lineno"
            result["traced_growth_per_object"] = [
                {
                    "where": " <- ".join(
                        f"{f.filename.split('site-packages/')[-1]}:{f.lineno}"
                        for f in reversed(s.traceback)
                    ),
                    "bytes_per_object": s.size_diff / n,
                    "blocks_per_object": s.count_diff / n,
                }
                for s in second.compare_to(first, grouping)[:40]
            ]
        return result

    def stop(self) -> None:
        self.bench.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=300, help="N: tenants per step")
    parser.add_argument("--probe", action="store_true", help="object counts, arenas, trim")
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace Python's allocations, keeping this many frames of each (0: off)",
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the operator")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args()

    def interrupted(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    run = MemoryBench(args)
    ok = False
    try:
        result = run.run()
        ok = True
    finally:
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_IGN)
        run.stop()
        if ok and not args.keep_workdir:
            shutil.rmtree(run.bench.workdir, ignore_errors=True)
        else:
            print(f"data and logs kept in {run.bench.workdir}")
    rss, per = result["rss_mb"], result["per_object_kb"]
    print(
        f"RSS: {rss['0']:.1f} MB at 0, {rss['N']:.1f} MB at N={args.tenants}, "
        f"{rss['2N']:.1f} MB at 2N; per object {per['0_to_N']:.1f} KB (0->N), "
        f"{per['N_to_2N']:.1f} KB (N->2N); peak {result['peak_mb']:.1f} MB"
    )
    for key in (
        "trim_mb",
        "pymalloc_mb",
        "malloc",
        "traced_per_object_kb",
        "gc_objects_per_object",
    ):
        if key in result:
            print(f"{key}: {json.dumps(result[key])}")
    if "gc_types_per_object" in result:
        print("live objects per tenant object:", json.dumps(result["gc_types_per_object"])[:2000])
    for row in result.get("traced_growth_per_object", [])[:25]:
        print(f"  {row['bytes_per_object']:8.0f} B {row['blocks_per_object']:6.1f}  {row['where']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
