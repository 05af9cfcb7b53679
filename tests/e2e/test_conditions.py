"""What a user sees for each problem they can cause, on the real control plane and registries:
a condition naming the reason, a Warning Event, no Secret written or blanked, and recovery
once the problem is fixed. Also the three connection choices (CA bundle, skip verification,
plain HTTP) and Bearer-token registries."""

from __future__ import annotations

import base64
import json
import time

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import free_port
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    ca_config_map,
    condition,
    events_for,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
)

KIND = "OCIRegistry"


def test_problems_become_conditions_and_recover(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    basic = registries.basic
    ca = {"caBundleRef": {"configMap": "registry-ca"}}

    def basic_auth(secret_name: str) -> dict:
        return {"basic": {"secretRef": {"name": secret_name}}}

    unmanaged = secret_object("conflict", namespace, mine="keep me")
    cases = {
        # name: (spec, expected Ready reason)
        "missing-secret": (
            {"server": basic.host, "auth": basic_auth("created-later"), "tls": ca},
            "SecretNotFound",
        ),
        "missing-key": (
            {"server": basic.host, "auth": basic_auth("no-password"), "tls": ca},
            "KeyMissing",
        ),
        "wrong-password": (
            {"server": basic.host, "auth": basic_auth("wrong"), "tls": ca},
            "AuthenticationFailed",
        ),
        "unreachable": (
            {"server": f"127.0.0.1:{free_port()}", "auth": basic_auth("good"), "tls": ca},
            "Unreachable",
        ),
        "unknown-ca": ({"server": basic.host, "auth": basic_auth("good")}, "TLSError"),
        "conflict": (
            {"server": basic.host, "auth": basic_auth("good"), "tls": ca},
            "SecretConflict",
        ),
        "skip-verify": (
            {
                "server": basic.host,
                "auth": basic_auth("good"),
                "tls": {"insecureSkipVerify": True},
            },
            "Ready",
        ),
        "docker-config": (
            {
                "server": basic.host,
                "auth": {"dockerConfig": {"secretRef": {"name": "existing-pull-secret"}}},
                "tls": ca,
            },
            "Ready",
        ),
        "plain-http": (
            {"server": registries.plain.host, "auth": {"anonymous": {}}, "tls": {"insecure": True}},
            "Ready",
        ),
    }
    apply(
        cluster,
        ca_config_map(namespace, registries.ca_file),
        secret_object("good", namespace, username=basic.username, password=basic.password),
        secret_object("no-password", namespace, username=basic.username),
        secret_object("wrong", namespace, username=basic.username, password="not-the-password"),
        unmanaged,
    )
    cluster.kubectl(
        "create", "secret", "docker-registry", "existing-pull-secret", "-n", namespace,
        f"--docker-server=https://{basic.host}", f"--docker-username={basic.username}",
        f"--docker-password={basic.password}",
    )  # fmt: skip
    operator = run_operator(*ALLOW_LOCAL_REGISTRIES)
    apply(cluster, *(registry_object(KIND, n, spec, namespace) for n, (spec, _) in cases.items()))

    for name, (_spec, reason) in cases.items():
        found = wait_for_reason(cluster, KIND, name, reason, namespace)
        assert found["status"] == ("True" if reason == "Ready" else "False"), (name, found)
        assert found["message"], name

    # Messages say what to fix.
    assert (
        "created-later" in condition(cluster, KIND, "missing-secret", "Ready", namespace)["message"]
    )
    assert "password" in condition(cluster, KIND, "missing-key", "Ready", namespace)["message"]
    # Transient problems keep retrying (Reconciling); problems only the user can fix are
    # Stalled. Both are abnormal-true (kstatus, Flux): present only while True, never both,
    # and a healthy object carries neither.
    assert condition(cluster, KIND, "unreachable", "Stalled", namespace) == {}
    assert condition(cluster, KIND, "unreachable", "Reconciling", namespace)["status"] == "True"
    assert condition(cluster, KIND, "wrong-password", "Stalled", namespace)["status"] == "True"
    assert condition(cluster, KIND, "wrong-password", "Reconciling", namespace) == {}
    for healthy in ("skip-verify", "docker-config", "plain-http"):
        shown = {c["type"] for c in registry(cluster, healthy, namespace)["status"]["conditions"]}
        assert shown == {"Ready", "CredentialsReady", "TargetsSynced"}, (healthy, shown)

    # Nothing was written for the failures; the unmanaged Secret is untouched.
    for name in ("missing-secret", "missing-key", "wrong-password", "unreachable", "unknown-ca"):
        assert secret(cluster, namespace, name) is None, name
    kept = secret(cluster, namespace, "conflict")
    assert kept is not None
    assert list(kept["data"]) == ["mine"]
    assert kept["type"] == "Opaque"
    status = registry(cluster, "conflict", namespace)["status"]
    assert status["targets"]["failed"][0]["reason"] == "SecretConflict"
    # Only the Secret's owner can mend it: Stalled (kstatus reads Failed), not Current.
    assert condition(cluster, KIND, "conflict", "Stalled", namespace)["reason"] == "SecretConflict"
    assert condition(cluster, KIND, "conflict", "Reconciling", namespace) == {}
    # A working registry with the other choices got its pull secret; anonymous needs none.
    assert secret(cluster, namespace, "skip-verify")["type"] == "kubernetes.io/dockerconfigjson"
    assert secret(cluster, namespace, "plain-http") is None
    assert condition(cluster, KIND, "plain-http", "TargetsSynced", namespace)["reason"] == (
        "AnonymousAccess"
    )

    # Ticks keep coming (every 10 s) but unchanged data is never rewritten.
    version = secret(cluster, namespace, "skip-verify")["metadata"]["resourceVersion"]
    written_at = time.monotonic()

    # Each failure posted a Warning Event with its reason.
    for name, (_spec, reason) in cases.items():
        if reason != "Ready":
            events = wait_for(
                lambda n=name, r=reason: [
                    e for e in events_for(cluster, n) if e["reason"] == r and e["type"] == "Warning"
                ],
                20,
                f"a Warning Event {reason} for {name}",
            )
            assert events

    # Fixing the input is noticed without waiting for the backoff.
    apply(
        cluster,
        secret_object("created-later", namespace, username=basic.username, password=basic.password),
    )
    wait_for_reason(cluster, KIND, "missing-secret", "Ready", namespace, timeout=30)
    assert secret(cluster, namespace, "missing-secret") is not None

    time.sleep(max(0.0, 12 - (time.monotonic() - written_at)))  # at least one more tick
    assert secret(cluster, namespace, "skip-verify")["metadata"]["resourceVersion"] == version

    # No credential in status, Events or the operator's log.
    everything = (
        json.dumps(
            [registry(cluster, name, namespace) for name in cases]
            + [e for name in cases for e in events_for(cluster, name)]
        )
        + operator.logs()
    )
    for value in (basic.password, "not-the-password"):
        assert value not in everything


def registry(cluster: ControlPlane, name: str, namespace: str) -> dict:
    return cluster.get_json("ociregistry", name, "-n", namespace)


def test_bearer_token_registry_with_password_and_identity_token(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    server = registries.token
    assert registries.token_server is not None
    refresh_token = registries.token_server.issue_refresh_token(server.username)
    apply(
        cluster,
        ca_config_map(namespace, registries.ca_file),
        secret_object("login", namespace, username=server.username, password=server.password),
        secret_object("refresh", namespace, token=refresh_token),
    )
    run_operator(*ALLOW_LOCAL_REGISTRIES)
    ca = {"caBundleRef": {"configMap": "registry-ca"}}
    apply(
        cluster,
        registry_object(
            KIND,
            "by-password",
            {
                "server": server.host,
                "auth": {"basic": {"secretRef": {"name": "login"}}},
                "tls": ca,
                "verify": {"repository": "team/app", "push": True},
            },
            namespace,
        ),
        registry_object(
            KIND,
            "by-identity-token",
            {
                "server": server.host,
                "auth": {"token": {"secretRef": {"name": "refresh"}, "username": server.username}},
                "tls": ca,
            },
            namespace,
        ),
    )
    wait_for_reason(cluster, KIND, "by-password", "Ready", namespace)
    wait_for_reason(cluster, KIND, "by-identity-token", "Ready", namespace)
    written = secret(cluster, namespace, "by-identity-token")
    assert written is not None
    entry = json.loads(base64.b64decode(written["data"][".dockerconfigjson"]))["auths"][server.host]
    assert entry["identitytoken"] == refresh_token
    assert "password" not in entry
