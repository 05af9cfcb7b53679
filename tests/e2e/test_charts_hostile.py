"""A tenant who rewrites her chart index ConfigMap, end to end: the real operator restarted
against the real API server, with a small chart registry on 127.0.0.1 (review finding 1)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
import yaml

from ocireg_devenv.controlplane import ControlPlane

from .helpers import ALLOW_LOCAL_REGISTRIES, apply, condition, registry, registry_object, wait_for
from .test_egress import POD_LIMIT, Hostile, _peak_rss

KIND = "OCIRegistry"
CONFIG = json.dumps(
    {"apiVersion": "v2", "name": "c", "version": "1.0.0", "description": "from the registry"}
).encode()
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.cncf.helm.config.v1+json",
            "digest": CONFIG_DIGEST,
            "size": len(CONFIG),
        },
        "layers": [],
    }
).encode()


@pytest.fixture
def chart_registry() -> Iterator[Hostile]:
    server = Hostile(_route, "127.0.0.1")
    yield server
    server.stop()


def _route(path: str) -> tuple[int, dict[str, str], bytes]:
    """One repository, team/c, holding one Helm chart version."""
    if path.startswith("/v2/team/c/tags/list"):
        return 200, {}, b'{"name": "team/c", "tags": ["1.0.0"]}'
    if path == "/v2/team/c/manifests/1.0.0":
        headers = {
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            "Docker-Content-Digest": "sha256:" + hashlib.sha256(MANIFEST).hexdigest(),
        }
        return 200, headers, MANIFEST
    if path == f"/v2/team/c/blobs/{CONFIG_DIGEST}":
        return 200, {"Content-Type": "application/octet-stream"}, CONFIG
    return 200, {}, b"{}"


def _alias_bomb(server: str, levels: int) -> str:
    """index.yaml whose entry for the version the registry lists carries 10**levels copies of
    a 10-character string through nested aliases: 582 bytes at 7 levels (348 MiB and 12 s
    for the operator before, 8 levels about 3 GB)."""
    lines = ["bomb:", '  a0: &a0 "xxxxxxxxxx"']
    lines += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines += [
        "apiVersion: v1",
        "entries:",
        "  c:",
        f'  - {{urls: ["oci://{server}/team/c:1.0.0"], digest: "sha256:00", version: "1.0.0",'
        f' name: c, description: "the tenant says so", x: *a{levels}}}',
    ]
    return "\n".join(lines) + "\n"


def _index(cluster: ControlPlane, namespace: str) -> str:
    found = cluster.kubectl("get", "configmap", "reg-charts", "-n", namespace, "-o", "json")
    return json.loads(found.stdout)["data"]["index.yaml"]


def test_a_rewritten_index_configmap_does_not_take_the_restarted_operator_out_of_memory(
    cluster: ControlPlane, crds: None, run_operator, namespace: str, chart_registry: Hostile
) -> None:
    spec = {
        "server": chart_registry.address,
        "auth": {"anonymous": {}},
        "tls": {"insecure": True},
        "charts": {"repositories": ["team/c"], "interval": "1h"},
    }
    operator = run_operator(*ALLOW_LOCAL_REGISTRIES)
    apply(cluster, registry_object(KIND, "reg", spec, namespace))
    wait_for(
        lambda: condition(cluster, KIND, "reg", "ChartsSynced", namespace).get("status") == "True",
        90,
        "the first ChartsSynced",
    )
    assert "from the registry" in _index(cluster, namespace)

    # The tenant keeps the ConfigMap (labels, owner) and replaces its index.yaml.
    bomb = _alias_bomb(chart_registry.address, 7)
    cluster.kubectl(
        "patch",
        "configmap",
        "reg-charts",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"data": {"index.yaml": bomb}}),
    )
    synced_at = registry(cluster, KIND, "reg", namespace)["status"]["charts"]["lastSyncedAt"]
    operator.stop()
    asked = len(chart_registry.paths)

    restarted = run_operator(*ALLOW_LOCAL_REGISTRIES)
    pid = restarted.process.popen.pid

    def resynced() -> bool:
        if _peak_rss(pid) >= POD_LIMIT:
            return True  # an OOM kill in a pod: no need to wait for the end
        charts = (registry(cluster, KIND, "reg", namespace).get("status") or {}).get("charts")
        return bool(charts) and charts.get("lastSyncedAt") != synced_at

    wait_for(resynced, 120, "the restarted operator's first chart sync")
    peak = _peak_rss(pid)
    print(f"restarted operator VmHWM: {peak / 2**20:.0f} MiB")
    assert peak < POD_LIMIT / 2, f"peak RSS {peak / 2**20:.0f} MiB"
    synced = condition(cluster, KIND, "reg", "ChartsSynced", namespace)
    assert synced["status"] == "True", synced
    assert synced["reason"] == "Synced", synced
    assert "indexed 1 version(s) of 1 chart(s)" in synced["message"]
    # The metadata came from the registry again, not from the tenant's text.
    later = chart_registry.paths[asked:]
    assert "/v2/team/c/manifests/1.0.0" in later
    assert f"/v2/team/c/blobs/{CONFIG_DIGEST}" in later
    status = registry(cluster, KIND, "reg", namespace)["status"]["charts"]
    assert status["versions"] == 1
    assert status.get("errorCount", 0) == 0, status
    document = yaml.safe_load(_index(cluster, namespace))
    if "bomb" not in document:  # rewritten by the operator (else left as the tenant wrote it)
        [entry] = document["entries"]["c"]
        assert entry["description"] == "from the registry"
