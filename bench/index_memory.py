"""Live Python memory the watch-fed index keeps per managed Secret, without a cluster, and
how much the process grows for it.

    PYTHONPATH=operator .venv/bin/python bench/index_memory.py [--namespaces 10000]
                                                               [--registries 10]

Feeds ClusterIndex().secrets (kube.cache.Store of plan.SecretState) one ADDED event per
pull Secret, each body as the API returns what plan.desired_secrets writes (ocireg's labels
and owner annotation, a UUID uid, a numeric resourceVersion, managedFields), one Secret per
registry (ClusterOCIRegistry) per namespace, and prints what tracemalloc sees still allocated
afterwards, per Secret. The bodies are made one at a time, as the fan-out's garbage is, so
only what the store keeps counts (and the namespace names, interned, at 10 Secrets a
namespace). Then the same fill in a fresh process without tracemalloc (--rss): how much its
resident set (VmRSS) grew, which the small objects' arenas, shared with that garbage, make
more than the live bytes.

At 10,000 namespaces x 10 registries (100,000 Secrets), CPython 3.11.7, 15 s:
  before mem-secretstate: 406 B per Secret: the SecretState 96, the uid string 85, the
    resourceVersion string 57, the store's (state, version) pair with the dict entry 85, the
    version as an int 28, the digest 49, the namespace names 6;
  since: 257 B per Secret: the SecretState 96, the uid as 16 bytes 49, the resourceVersion as
    an int 28 (the state's only copy), the dict entry 29, the digest 49, the names 6.
  before index-pack: 263 B live per Secret (the above, and the store's per-namespace change
    counts 5), four objects of its own each; RSS growth 30.3 MB, 303 B per Secret;
  since: 137 B live per Secret: the SecretState, one bytes object of 45 (the shared labels,
    type and annotations by number, the digest, the resourceVersion, the uid) 96, the dict
    entry 29, the names 6, the change counts 5; RSS growth 14.2 MB, 142 B per Secret.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

from ocireg.api.ownership import RegistryRef
from ocireg.pullsecrets import plan
from ocireg.pullsecrets.index import ClusterIndex


def bodies(namespaces: int, registries: int) -> Iterator[dict[str, Any]]:
    refs = [
        RegistryRef("ClusterOCIRegistry", f"registry-{r}", uid=str(uuid.uuid4()))
        for r in range(registries)
    ]
    version = 48_000_000  # a busy cluster's etcd revision
    for n in range(namespaces):
        namespace = f"team-{n:05d}"
        for ref in refs:
            version += 7
            auth = base64.b64encode(f"user-{n}:token-{ref.name}".encode()).decode()
            config = json.dumps({"auths": {"registry.example.com": {"auth": auth}}})
            yield {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": ref.name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(version),
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                    "labels": ref.labels(),
                    "annotations": ref.annotations(),
                    "managedFields": [{"manager": "ocireg", "operation": "Update"}],
                },
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
            }


def feed(namespaces: int, registries: int) -> ClusterIndex:
    index = ClusterIndex()
    for body in bodies(namespaces, registries):
        index.secrets.apply("ADDED", body)
    return index


def measure(namespaces: int, registries: int) -> tuple[int, int]:
    """(Secrets kept, bytes still allocated since the store was empty)."""
    plan.data_digest({})  # the first call's own allocations (hashlib, json) are not the store's
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = feed(namespaces, registries)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return len(index.secrets), after - before


def rss() -> int:
    """This process's resident set (VmRSS), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def rss_growth(namespaces: int, registries: int) -> int:
    """How much the resident set grows while the store fills, in a fresh process (--rss)."""
    plan.data_digest({})
    gc.collect()
    before = rss()
    index = feed(namespaces, registries)
    gc.collect()
    grown = rss() - before
    del index
    return grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=10_000)
    parser.add_argument("--registries", type=int, default=10)
    parser.add_argument("--rss", action="store_true", help="print the RSS growth alone")
    args = parser.parse_args()
    shape = ["--namespaces", str(args.namespaces), "--registries", str(args.registries)]
    if args.rss:
        print(rss_growth(args.namespaces, args.registries))
        return
    # Each figure in a process of its own: tracemalloc's bookkeeping would count in the RSS,
    # and a first fill's leftovers (the interned names' table) in a second fill's live bytes.
    child = subprocess.run(
        [sys.executable, __file__, "--rss", *shape], capture_output=True, text=True, check=True
    )
    grown = int(child.stdout)
    count, used = measure(args.namespaces, args.registries)
    print(f"{count} Secrets: {used / 1e6:.1f} MB live, {used / count:.0f} B per Secret")
    print(f"RSS growth: {grown / 1e6:.1f} MB, {grown / count:.0f} B per Secret")


if __name__ == "__main__":
    main()
