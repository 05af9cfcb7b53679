"""Rotate now: `kubectl annotate` a registry object with ocireg.dev/refresh-requested-at (or
Flux's reconcile.fluxcd.io/requestedAt) and its credentials are minted again and every copy
rewritten, once per value, the value handled reported in status; on the real control plane
with a real webhook-minted credential the local registry accepts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocireg_devenv.clients import Clients, docker_config, write_docker_config
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    apply,
    ca_config_map,
    events_for,
    minting_webhook,
    registry,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
    webhook_auth,
)
from .test_cloud_credentials import pulls

CLUSTER = "ClusterOCIRegistry"


@pytest.fixture
def targets(cluster: ControlPlane, namespace: str) -> Iterator[list[str]]:
    names = [f"{namespace}-a", f"{namespace}-b"]
    for name in names:
        cluster.kubectl("create", "namespace", name)
    yield names
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_an_annotation_mints_again_and_rewrites_every_copy_once_per_value(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    targets: list[str],
    tmp_path: Path,
) -> None:
    basic = registries.basic
    pusher = write_docker_config(
        tmp_path / "pusher", docker_config({basic.host: (basic.username, basic.password)})
    ).parent
    image = f"{basic.host}/refresh/app:1"
    clients.push_image(image, b"refresh", pusher)
    hook = minting_webhook(registries, "let-me-in", 3600)  # nothing would renew it during the test
    name = f"now-{namespace[-6:]}"
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object("hook-headers", namespace, **{"X-Api-Key": "let-me-in"}),
        )
        run_operator("--credentials-namespace", namespace)
        spec = {
            "server": basic.host,
            "auth": webhook_auth(hook),
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {"namespaces": targets},
        }
        apply(cluster, registry_object(CLUSTER, name, spec))
        wait_for_reason(cluster, CLUSTER, name, "Ready")
        first = {t: wait_for(lambda t=t: secret(cluster, t, name), 30, "a copy") for t in targets}
        mints = sum(hook.calls.values())
        assert mints == 1
        assert all(pulls(clients, image, first[t], tmp_path) for t in targets)

        requested = "2026-12-07T15:30:00Z"
        cluster.kubectl(
            "annotate", "clusterociregistry", name, f"ocireg.dev/refresh-requested-at={requested}"
        )
        handled = wait_for(
            lambda: registry(cluster, CLUSTER, name)["status"].get("lastHandledRefreshAt"),
            45,
            "the refresh request to be handled",
        )
        assert handled == requested
        assert sum(hook.calls.values()) == mints + 1
        rewritten = {t: secret(cluster, t, name) for t in targets}
        for target in targets:
            copy = rewritten[target]
            assert copy is not None
            assert copy["data"] != first[target]["data"], target
            assert pulls(clients, image, copy, tmp_path)
        assert not pulls(clients, image, first[targets[0]], tmp_path)  # the old token is gone
        assert rewritten[targets[0]]["data"] == rewritten[targets[1]]["data"]
        assert "Refreshed" in [e["reason"] for e in events_for(cluster, name)]
        assert wait_for_reason(cluster, CLUSTER, name, "Ready")

        # The same value again: nothing is minted or written.
        versions = {t: rewritten[t]["metadata"]["resourceVersion"] for t in targets}
        cluster.kubectl(
            "annotate",
            "clusterociregistry",
            name,
            f"ocireg.dev/refresh-requested-at={requested}",
            "--overwrite",
        )
        time.sleep(8)
        assert sum(hook.calls.values()) == mints + 1
        for target in targets:
            assert secret(cluster, target, name)["metadata"]["resourceVersion"] == versions[target]

        # Flux's convention, as `flux reconcile` sets it: handled the same way, reported in
        # Flux's field.
        cluster.kubectl(
            "annotate", "clusterociregistry", name, "reconcile.fluxcd.io/requestedAt=flux-1"
        )
        wait_for(
            lambda: (
                registry(cluster, CLUSTER, name)["status"].get("lastHandledReconcileAt") == "flux-1"
            ),
            45,
            "Flux's request to be handled",
        )
        assert sum(hook.calls.values()) == mints + 2
        assert secret(cluster, targets[1], name)["data"] != rewritten[targets[1]]["data"]
    finally:
        cluster.kubectl("delete", "clusterociregistry", name, "--wait=false", check=False)
        hook.stop()
