"""Event-driven credentials for tenant objects: nothing polls while nothing changes, and a
change to anything an object read (its credentials Secret, its CA ConfigMap, the base it
extends) reaches it from a watch, with re-verification an hour away. The resync is set to its
shortest (10 s) to show that it costs no reads either: nothing an object read has changed, so
it trusts its last run. Before, every object re-read its Secrets every 10 s (2,950 requests a
minute for 500 objects), so the idle part of this test fails on that code (8 reads)."""

from __future__ import annotations

import secrets
import time

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    ca_config_map,
    condition,
    registry_object,
    secret_object,
    secret_text,
    wait_for,
    wait_for_reason,
)

KIND = "OCIRegistry"
# Only a watch can bring a change this soon: re-verification (refresh.interval 1h) is far off,
# no timer polls, and a resync reads nothing.
FOLLOWS_WITHIN = 20.0
IDLE_SECONDS = 25.0


def reads_in(cluster: ControlPlane, namespace: str) -> list[str]:
    """Single-object reads of Secrets and ConfigMaps in this namespace the API server has
    answered so far, from its audit log (who, what), so that other tests' namespaces being
    tidied (the garbage collector, their objects' last runs) do not count."""
    return [
        f"{event['user']['username']} ({event.get('userAgent', '?')}) read "
        f"{event['objectRef']['resource']}/{event['objectRef'].get('name')}"
        for event in cluster.audited_reads(namespace, ("secrets", "configmaps"))
    ]


def test_a_tenant_object_runs_on_changes_to_what_it_read_and_is_quiet_otherwise(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    basic = registries.basic
    apply(
        cluster,
        secret_object("robot", namespace, username=basic.username, password=basic.password),
        secret_object("other", namespace, username=basic.username, password="not-this-one"),
        ca_config_map(namespace, registries.ca_file),
        registry_object(
            KIND,
            "base",
            {
                "server": basic.host,
                "auth": {"basic": {"secretRef": {"name": "robot"}}},
                "tls": {"caBundleRef": {"configMap": "registry-ca"}},
                "targets": {"secretName": "base-pull"},
            },
            namespace,
        ),
        registry_object(
            KIND, "derived", {"extends": "base", "targets": {"secretName": "derived"}}, namespace
        ),
    )
    run_operator(*ALLOW_LOCAL_REGISTRIES, "--resync", "10")
    for name in ("base", "derived"):
        wait_for_reason(cluster, KIND, name, "Ready", namespace)

    # Idle, through two resyncs: no object re-reads anything it read (the old code read both
    # Secrets and the ConfigMap every 10 s).
    time.sleep(3)  # the runs that the Ready status patches started are over
    before = len(reads_in(cluster, namespace))
    assert before > 0, "the first runs read the login Secret and the CA ConfigMap: audit log?"
    time.sleep(IDLE_SECONDS)
    idle_reads = reads_in(cluster, namespace)[before:]
    print(f"Secret/ConfigMap reads in {IDLE_SECONDS:.0f} idle seconds: {len(idle_reads)}")
    assert idle_reads == []

    # A new login in the tenant's Secret: both objects' copies follow from the watch.
    user, password = f"robot-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    registries.set_user("basic", user, password)
    started = time.monotonic()
    apply(cluster, secret_object("robot", namespace, username=user, password=password))
    for copy in ("base-pull", "derived"):
        wait_for(
            lambda copy=copy: (
                password in (secret_text(cluster, namespace, copy, ".dockerconfigjson") or "")
            ),
            FOLLOWS_WITHIN,
            f"the copy {copy} to carry the new login",
        )
    print(f"a new login reached both copies in {time.monotonic() - started:.1f}s")

    # The CA ConfigMap replaced by one that does not hold the registry's CA: both notice.
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "registry-ca", "namespace": namespace},
            "data": {"ca.crt": "not a certificate"},
        },
    )
    for name in ("base", "derived"):
        found = wait_for(
            lambda name=name: (
                (c := condition(cluster, KIND, name, "Ready", namespace)).get("status") == "False"
                and c
            ),
            FOLLOWS_WITHIN,
            f"{name} to notice its CA bundle changed",
        )
        assert "caBundleRef" in found["message"], found
    apply(cluster, ca_config_map(namespace, registries.ca_file))
    for name in ("base", "derived"):
        wait_for_reason(cluster, KIND, name, "Ready", namespace, timeout=FOLLOWS_WITHIN)

    # The base now names a Secret with a wrong password: the object extending it follows.
    cluster.kubectl(
        "patch", "ociregistry", "base", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"auth": {"basic": {"secretRef": {"name": "other"}}}}}',
    )  # fmt: skip
    wait_for_reason(
        cluster, KIND, "derived", "AuthenticationFailed", namespace, timeout=FOLLOWS_WITHIN
    )
    # The copy it wrote keeps the last good login (nothing is blanked on a failure).
    assert password in (secret_text(cluster, namespace, "derived", ".dockerconfigjson") or "")
