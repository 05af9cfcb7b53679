"""What a user sees of both kinds through kubectl itself, on the real control plane: the
`kubectl get` columns (expiry readable, `-o wide` with the Ready message), the Events in
`kubectl describe` (cluster-scoped ones too, from `ocireg`, a repeat counted on one Event),
and `kubectl explain` on status. Each test failed on the code before: EXPIRES showed
`<invalid>`, `kubectl describe clusterociregistry` showed `Events: <none>`, and `kubectl
explain ociregistry.status.conditions` an empty description."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pytest

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    ca_config_map,
    events_for,
    minting_webhook,
    registry,
    registry_object,
    secret_object,
    wait_for,
    wait_for_reason,
    webhook_auth,
)

TENANT, CLUSTER = "OCIRegistry", "ClusterOCIRegistry"
LIFETIME = 3600


def table(output: str) -> list[dict[str, str]]:
    """kubectl's table output as rows of header -> cell: each cell stands under its header
    (headers are words joined by single spaces, columns at least three spaces apart)."""
    lines = output.rstrip("\n").splitlines()
    found = list(re.finditer(r"\S+(?: \S+)*", lines[0]))
    starts = [m.start() for m in found] + [None]
    return [
        {m.group(): line[a:b].strip() for m, a, b in zip(found, starts, starts[1:], strict=False)}
        for line in lines[1:]
    ]


def get(cluster: ControlPlane, *args: str) -> tuple[str, list[dict[str, str]]]:
    output = cluster.kubectl("get", *args).stdout
    return output, table(output)


@pytest.fixture
def target(cluster: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"{namespace}-t"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_get_shows_when_credentials_expire_and_wide_shows_why(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
    target: str,
) -> None:
    hook = minting_webhook(registries, "views", LIFETIME)
    auth = webhook_auth(hook)
    tls = {"caBundleRef": {"configMap": "registry-ca"}}
    server = registries.basic.host
    cluster_name = f"{namespace}-hook"
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object("hook-headers", namespace, **{"X-Api-Key": "views"}),
        )
        run_operator("--credentials-namespace", namespace, *ALLOW_LOCAL_REGISTRIES)
        # One at a time: each mint replaces the registry's password for the webhook's user.
        apply(
            cluster,
            registry_object(
                CLUSTER,
                cluster_name,
                {"server": server, "auth": auth, "tls": tls, "targets": {"namespaces": [target]}},
            ),
        )
        wait_for_reason(cluster, CLUSTER, cluster_name, "Ready")
        apply(
            cluster,
            registry_object(
                TENANT, "hook", {"server": server, "auth": auth, "tls": tls}, namespace
            ),
            registry_object(
                TENANT,
                "broken",
                {"server": server, "auth": {"basic": {"secretRef": {"name": "nope"}}}},
                namespace,
            ),
        )
        wait_for_reason(cluster, TENANT, "hook", "Ready", namespace)
        wait_for_reason(cluster, TENANT, "broken", "SecretNotFound", namespace)

        for kind, name, where in ((TENANT, "hook", namespace), (CLUSTER, cluster_name, None)):
            scope = ["-n", where] if where else []
            status = registry(cluster, kind, name, where)["status"]
            expires = status["credentials"]["expiresAt"]
            output, rows = get(cluster, kind.lower(), name, *scope)
            assert "<invalid>" not in output, output
            assert list(rows[0]) == ["NAME", "SERVER", "AUTH", "READY", "EXPIRES", "AGE"], output
            row = rows[0]
            assert (row["NAME"], row["AUTH"], row["READY"]) == (name, "webhook", "True"), output
            # The absolute time, as the status has it (whole seconds): in about an hour, not
            # `<invalid>`.
            assert row["EXPIRES"] == expires, output
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expires), expires
            left = dt.datetime.fromisoformat(expires.replace("Z", "+00:00")) - dt.datetime.now(
                dt.UTC
            )
            assert dt.timedelta(minutes=50) < left <= dt.timedelta(seconds=LIFETIME), left

            output, rows = get(cluster, kind.lower(), name, *scope, "-o", "wide")
            assert "<invalid>" not in output, output
            assert list(rows[0]) == [
                "NAME",
                "SERVER",
                "AUTH",
                "READY",
                "EXPIRES",
                "AGE",
                "NAMESPACES",
                "NEXT REFRESH",
                "REASON",
                "MESSAGE",
            ], output
            wide = rows[0]
            assert wide["NAMESPACES"] == "1", output
            assert wide["NEXT REFRESH"] == status["credentials"]["nextRefreshAt"], output
            assert wide["REASON"] == "Ready", output
            assert wide["MESSAGE"] == "credentials verified and pull secrets written", output

        # A failing object: the reason and the message saying what to fix, in the list.
        output, rows = get(cluster, "ociregistries", "-n", namespace, "-o", "wide")
        broken = next(r for r in rows if r["NAME"] == "broken")
        assert (broken["READY"], broken["REASON"]) == ("False", "SecretNotFound"), output
        assert broken["MESSAGE"] == f"Secret {namespace}/nope does not exist", output
        assert broken["EXPIRES"] == "", output  # never verified: nothing to expire
        assert "<invalid>" not in output
    finally:
        cluster.kubectl(
            "delete", "clusterociregistry", cluster_name, "--ignore-not-found", "--timeout=60s",
            check=False,
        )  # fmt: skip
        hook.stop()


def described_events(cluster: ControlPlane, *args: str) -> list[dict[str, str]]:
    """The Events section of `kubectl describe`, as rows."""
    output = cluster.kubectl("describe", *args).stdout
    section = output.split("\nEvents:", 1)[1]
    if section.strip() == "<none>":
        return []
    lines = [line[2:] for line in section.splitlines()[1:] if line.strip()]
    return [row for row in table("\n".join(lines)) if not row["Type"].startswith("-")]


def test_describe_shows_the_events_of_both_kinds_from_ocireg_counted_not_repeated(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
    target: str,
) -> None:
    basic = registries.basic
    tls = {"caBundleRef": {"configMap": "registry-ca"}}
    auth = {"basic": {"secretRef": {"name": "login"}}}
    cluster_name = f"{namespace}-corp"
    for where in (namespace, target):
        apply(
            cluster,
            ca_config_map(where, registries.ca_file),
            # Not ocireg's: each sync finds the name taken (SecretConflict), every resync.
            secret_object(cluster_name, where, mine="keep"),
            secret_object("taken", where, mine="keep"),
        )
    apply(
        cluster,
        secret_object("login", namespace, username=basic.username, password=basic.password),
    )
    run_operator("--credentials-namespace", namespace, "--resync", "10", *ALLOW_LOCAL_REGISTRIES)
    try:
        apply(
            cluster,
            registry_object(
                CLUSTER,
                cluster_name,
                {
                    "server": basic.host,
                    "auth": auth,
                    "tls": tls,
                    "targets": {"namespaces": [namespace, target]},
                },
            ),
            registry_object(
                TENANT,
                "team",
                {
                    "server": basic.host,
                    "auth": auth,
                    "tls": tls,
                    "targets": {"secretName": "taken"},
                },
                namespace,
            ),
        )
        for kind, name, where in ((CLUSTER, cluster_name, None), (TENANT, "team", namespace)):
            wait_for_reason(cluster, kind, name, "SecretConflict", where)
            args = (kind.lower(), name, *(["-n", where] if where else []))
            # Two resyncs later the same Warning has come again: one Event, counted.
            rows = wait_for(
                lambda a=args: (
                    (rows := described_events(cluster, *a))
                    and any(
                        r["Reason"] == "SecretConflict" and "(x2 over" in r["Age"] for r in rows
                    )
                    and rows
                ),
                60,
                f"a counted SecretConflict Event in `kubectl describe {' '.join(args)}`",
            )
            assert {r["From"] for r in rows} == {"ocireg"}, rows
            shown = {(r["Type"], r["Reason"]) for r in rows}
            assert {("Normal", "Verified"), ("Warning", "SecretConflict")} <= shown, rows
            conflicts = [r for r in rows if r["Reason"] == "SecretConflict"]
            assert len(conflicts) == (2 if kind == CLUSTER else 1), rows  # one per namespace
            assert all(r["Message"].startswith("namespace ") for r in conflicts), rows

        # Where they are: the cluster object's in `default`, about an object without a
        # namespace; the tenant's in its namespace.
        posted = events_for(cluster, cluster_name)
        assert {e["metadata"]["namespace"] for e in posted} == {"default"}
        assert all("namespace" not in e["involvedObject"] for e in posted)
        assert all(e["involvedObject"]["kind"] == CLUSTER for e in posted)
        tenant_events = [
            e for e in events_for(cluster, "team") if e["involvedObject"]["kind"] == TENANT
        ]
        assert {e["metadata"]["namespace"] for e in tenant_events} == {namespace}
        assert {e["source"]["component"] for e in posted + tenant_events} == {"ocireg"}
    finally:
        cluster.kubectl(
            "delete", "clusterociregistry", cluster_name, "--ignore-not-found", "--timeout=60s",
            check=False,
        )  # fmt: skip


def test_explain_describes_the_status_conditions(cluster: ControlPlane, crds: None) -> None:
    for kind in ("ociregistry", "clusterociregistry"):
        explained = wait_for(
            lambda k=kind: cluster.kubectl("explain", f"{k}.status.conditions", check=False).stdout,
            30,
            f"kubectl explain {kind}.status.conditions",
        )
        description = explained.split("DESCRIPTION:", 1)[1].split("FIELDS:", 1)[0]
        assert "Reconciling" in description, explained
        assert "present only while True" in " ".join(description.split()), explained
        status = cluster.kubectl("explain", f"{kind}.status.conditions.status").stdout
        assert "True, False or Unknown" in status, status
        for field in ("credentials", "targets"):
            shown = cluster.kubectl("explain", f"{kind}.status.{field}").stdout
            text = shown.split("DESCRIPTION:", 1)[1].split("FIELDS:", 1)[0].strip()
            assert text, shown
            assert text != "<empty>", shown
