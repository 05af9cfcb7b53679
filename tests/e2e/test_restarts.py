"""Restarts that cost nothing while credentials are valid (issue "ten times the cluster",
item 3), on the real control plane with the real operator process:

- a converged operator is stopped and started again: the minted webhook credential its copies
  hold is reused, so the webhook is not asked again, no Secret is written (every
  resourceVersion is the same) and the object's status is exactly what it was;
- a tenant who edits, while the operator is down, the copy in her namespace (and, for her own
  OCIRegistry, its status record too) never gets her bytes handed out or kept: a cluster
  object reuses its credential from the copies she cannot touch and puts hers right, and her
  own object is minted again.

The webhook stand-in counts its mints; the local registry accepts only the latest token of
each user, so a reused token is also proved to be the one still valid."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocireg_devenv.clients import Clients, docker_config, write_docker_config
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.hygiene import remember
from ocireg_devenv.registries import LocalRegistries
from ocireg_devenv.standins import AwsStandIn, AzureStandIn, GoogleStandIn, WebhookStandIn

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    ca_config_map,
    minting_webhook,
    registry,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
    webhook_auth,
)
from .test_cloud_credentials import MOTO_PASSWORD, _service_account_key, cluster_registry

CLUSTER = "ClusterOCIRegistry"
TENANT = "OCIRegistry"
MINT = "GET /credentials"
# Longer than a tick (10 s) and the first resync after a restart: anything the restarted
# operator would write or mint for a converged object happens within this.
QUIET_SECONDS = 25


@pytest.fixture
def extra_namespaces(cluster: ControlPlane, namespace: str) -> Iterator[list[str]]:
    names = [f"{namespace[:50]}-b", f"{namespace[:50]}-c"]
    for name in names:
        cluster.kubectl("create", "namespace", name)
    yield names
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def versions(cluster: ControlPlane, where: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    found = {}
    for namespace, name in where:
        body = secret(cluster, namespace, name)
        assert body is not None, f"no Secret {namespace}/{name}"
        found[(namespace, name)] = body["metadata"]["resourceVersion"]
    return found


def password_in(pull_secret: dict[str, Any], host: str) -> str:
    config = json.loads(base64.b64decode(pull_secret["data"][".dockerconfigjson"]))
    return str(config["auths"][host]["password"])


def resumed(operator: Any, objects: int) -> bool:
    """kopf's own line once the restarted operator's resume handlers ran for ``objects``
    objects."""
    lines = operator.logs().splitlines()
    return sum(line.startswith("Resuming is processed") for line in lines) >= objects


def stop_and_restart(
    run_operator: Any,
    operator: Any,
    args: tuple[str, ...],
    objects: int,
    env: dict[str, str] | None = None,
) -> Any:
    assert operator.stop() == 0
    restarted = run_operator(*args, env=env, name="restarted")
    wait_for(lambda: resumed(restarted, objects), 60, f"{objects} object(s) resumed")
    time.sleep(QUIET_SECONDS)
    return restarted


def test_a_restart_of_a_converged_operator_mints_nothing_and_writes_nothing(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    extra_namespaces: list[str],
    tmp_path: Path,
) -> None:
    basic = registries.basic
    hook = minting_webhook(registries, "restart-key", 3600)
    targets = [namespace, *extra_namespaces]
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object("hook-headers", namespace, **{"X-Api-Key": "restart-key"}),
        )
        args = ("--credentials-namespace", namespace)
        operator = run_operator(*args)
        spec = {
            "server": basic.host,
            "auth": webhook_auth(hook, "hook-headers"),
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {"namespaces": targets, "secretName": "restart-hook"},
        }
        apply(cluster, registry_object(CLUSTER, "restart-hook", spec))
        wait_for_reason(cluster, CLUSTER, "restart-hook", "Ready")
        copies = [(n, "restart-hook") for n in targets]
        wait_for(lambda: all(secret(cluster, n, s) for n, s in copies), 30, "every copy")
        time.sleep(12)  # a tick later: converged (nothing more to mint or write)
        mints = hook.calls[MINT]
        assert mints == 1
        before = versions(cluster, copies)
        status = registry(cluster, CLUSTER, "restart-hook")["status"]
        accounts = {n: cluster.get_json("serviceaccount", "default", "-n", n) for n in targets}

        restarted = stop_and_restart(run_operator, operator, args, 1)

        assert hook.calls[MINT] == mints, "the restarted operator minted again"
        assert versions(cluster, copies) == before, "the restarted operator rewrote a copy"
        after = registry(cluster, CLUSTER, "restart-hook")["status"]
        assert after == status, "the restarted operator changed the status"
        for n in targets:
            account = cluster.get_json("serviceaccount", "default", "-n", n)
            assert (
                account["metadata"]["resourceVersion"]
                == (accounts[n]["metadata"]["resourceVersion"])
            )
        assert {c["type"]: c["status"] for c in after["conditions"]}["Ready"] == "True"
        # The reused token is the webhook's latest, the one the registry accepts.
        authfile = tmp_path / "auth.json"
        pull = secret(cluster, namespace, "restart-hook")
        assert pull is not None
        authfile.write_bytes(base64.b64decode(pull["data"][".dockerconfigjson"]))
        pusher = write_docker_config(
            tmp_path / "pusher", docker_config({basic.host: (basic.username, basic.password)})
        ).parent
        ref = f"{basic.host}/restart/app:1"
        clients.push_image(ref, b"restart", pusher)
        assert clients.skopeo_pull(ref, authfile, tmp_path / "pulled").returncode == 0
        assert "reusing" in restarted.logs()
    finally:
        cluster.kubectl("delete", "clusterociregistry", "restart-hook", "--wait=false", check=False)
        hook.stop()


def test_an_object_for_argo_cd_only_mints_and_writes_nothing_after_a_restart(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    """A ClusterOCIRegistry that selects no namespace and writes only Argo CD's repository
    credentials (the usual shape for ECR and Helm charts) has no pull secret to read its
    credential back from: the restarted operator reads its Argo CD Secret instead."""
    basic = registries.basic
    hook = minting_webhook(registries, "argo-restart-key", 3600)
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object("hook-headers", namespace, **{"X-Api-Key": "argo-restart-key"}),
        )
        args = ("--credentials-namespace", namespace)
        operator = run_operator(*args)
        spec = {
            "server": basic.host,
            "auth": webhook_auth(hook, "hook-headers"),
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {"argoCD": {"namespace": namespace}},
        }
        apply(cluster, registry_object(CLUSTER, "argo-only", spec))
        wait_for_reason(cluster, CLUSTER, "argo-only", "Ready")
        copies = [(namespace, "argo-only-argocd")]
        wait_for(lambda: secret(cluster, namespace, "argo-only-argocd"), 30, "the Argo CD Secret")
        time.sleep(12)  # a tick later: converged
        assert hook.calls[MINT] == 1
        before = versions(cluster, copies)

        restarted = stop_and_restart(run_operator, operator, args, 1)

        assert hook.calls[MINT] == 1, "the restarted operator minted again"
        assert versions(cluster, copies) == before, "the restarted operator rewrote the Secret"
        assert f"reusing its credentials from the copy in {namespace}" in restarted.logs()
    finally:
        cluster.kubectl("delete", "clusterociregistry", "argo-only", "--wait=false", check=False)
        hook.stop()


def _tenant_role(namespace: str, user: str) -> list[dict[str, Any]]:
    """What a tenant may do in her namespace (as in test_tenant_isolation): her own
    OCIRegistry objects and their status, and any Secret."""
    rules = [
        {
            "apiGroups": ["ocireg.dev"],
            "resources": ["ociregistries", "ociregistries/status"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        },
    ]
    meta = {"name": "registry-tenant", "namespace": namespace}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "registry-tenant"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    ]  # fmt: skip


def _forged(pull_secret: dict[str, Any], host: str, password: str) -> dict[str, Any]:
    """The copy with the tenant's own password in it, everything else (labels, owner
    annotation) left as the operator wrote it."""
    config = json.loads(base64.b64decode(pull_secret["data"][".dockerconfigjson"]))
    entry = config["auths"][host]
    entry["password"] = password
    entry["auth"] = base64.b64encode(f"{entry['username']}:{password}".encode()).decode()
    forged = {k: v for k, v in pull_secret.items() if k != "status"}
    forged["data"] = {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}
    return forged


def test_a_tenants_forged_copy_or_record_is_never_reused(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
    extra_namespaces: list[str],
) -> None:
    basic = registries.basic
    platform_hook = WebhookStandIn(
        lambda user, password: registries.set_user("basic", user, password),
        header=("X-Api-Key", "platform-key"),
        lifetime=3600,
    ).start()
    # The tenant's webhook answers no username: hers comes from the spec, so the registry
    # keeps both users' latest tokens.
    tenant_hook = WebhookStandIn(
        lambda _user, password: registries.set_user("basic", "tenant-user", password),
        header=("X-Api-Key", "tenant-key"),
        lifetime=3600,
    ).start()
    platform_hook.json_answers = tenant_hook.json_answers = True
    targets = [namespace, *extra_namespaces]
    credentials_namespace = extra_namespaces[1]
    alice = f"alice-{secrets.token_hex(3)}"
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            ca_config_map(credentials_namespace, registries.ca_file),
            secret_object("hook-headers", credentials_namespace, **{"X-Api-Key": "platform-key"}),
            secret_object("my-hook-headers", namespace, **{"X-Api-Key": "tenant-key"}),
            *_tenant_role(namespace, alice),
        )
        as_alice = cluster.kubeconfig_for_user(alice)
        args = ("--credentials-namespace", credentials_namespace, *ALLOW_LOCAL_REGISTRIES)
        operator = run_operator(*args)
        tls = {"caBundleRef": {"configMap": "registry-ca"}}
        apply(
            cluster,
            registry_object(
                CLUSTER,
                "shared-hook",
                {
                    "server": basic.host,
                    "auth": webhook_auth(platform_hook, "hook-headers"),
                    "tls": tls,
                    "targets": {"namespaces": targets, "secretName": "shared-hook"},
                },
            ),
            registry_object(
                TENANT,
                "own-hook",
                {
                    "server": basic.host,
                    "auth": webhook_auth(
                        tenant_hook,
                        "my-hook-headers",
                        usernameField="auth.none",
                        username="tenant-user",
                    ),
                    "tls": tls,
                },
                namespace,
            ),
        )
        wait_for_reason(cluster, CLUSTER, "shared-hook", "Ready")
        wait_for_reason(cluster, TENANT, "own-hook", "Ready", namespace)
        copies = [(n, "shared-hook") for n in targets]
        wait_for(lambda: all(secret(cluster, n, s) for n, s in copies), 30, "every copy")
        time.sleep(12)
        assert (platform_hook.calls[MINT], tenant_hook.calls[MINT]) == (1, 1)
        genuine = password_in(secret(cluster, extra_namespaces[0], "shared-hook") or {}, basic.host)
        before = versions(cluster, copies)
        own_status = registry(cluster, TENANT, "own-hook", namespace)["status"]
        assert operator.stop() == 0

        # While the operator is down, alice puts her own password into both copies in her
        # namespace (labels and owner annotation untouched), and into her object's status
        # record a far expiry.
        planted = "alice-planted-" + secrets.token_hex(6)
        remember(planted, "the tenant's planted password")
        for name in ("shared-hook", "own-hook"):
            found = secret(cluster, namespace, name)
            assert found is not None
            forged = _forged(found, basic.host, planted)
            result = cluster.kubectl(
                "replace", "-f", "-", kubeconfig=as_alice, input=yaml.safe_dump(forged),
                check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        far = (dt.datetime.now(dt.UTC) + dt.timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"status": {"credentials": {"expiresAt": far}}}
        result = cluster.kubectl(
            "patch", "ociregistry", "own-hook", "-n", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps(patch), kubeconfig=as_alice, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        # She may not touch the cluster object's status (where its record is).
        denied = cluster.kubectl(
            "auth", "can-i", "patch", "clusterociregistries.ocireg.dev/shared-hook",
            "--subresource=status", kubeconfig=as_alice, check=False,
        )  # fmt: skip
        assert denied.stdout.strip() == "no"

        stop_and_restart(run_operator, operator, args, 2)

        # The cluster object: reused from the copies alice cannot write (no mint), the
        # others untouched, hers put right with the genuine token (never her password).
        assert platform_hook.calls[MINT] == 1
        after = versions(cluster, copies)
        for where in copies[1:]:
            assert after[where] == before[where]
        shared = wait_for(
            lambda: (
                (s := secret(cluster, namespace, "shared-hook"))
                and password_in(s, basic.host) != planted
                and s
            ),
            30,
            "alice's copy of the cluster object's Secret to be put right",
        )
        assert password_in(shared, basic.host) == genuine

        # Her own object: the forged record is not taken; minted again, her password gone.
        assert tenant_hook.calls[MINT] == 2
        own = secret(cluster, namespace, "own-hook")
        assert own is not None
        assert password_in(own, basic.host) != planted
        wait_for_reason(cluster, TENANT, "own-hook", "Ready", namespace)
        credentials = registry(cluster, TENANT, "own-hook", namespace)["status"]["credentials"]
        assert credentials["expiresAt"] != far
        assert credentials["expiresAt"] != own_status["credentials"]["expiresAt"]
    finally:
        cluster.kubectl("delete", "clusterociregistry", "shared-hook", "--wait=false", check=False)
        cluster.kubectl(
            "delete", "ociregistry", "own-hook", "-n", namespace, "--wait=false", check=False
        )
        platform_hook.stop()
        tenant_hook.stop()


def test_cloud_tokens_are_reused_after_a_restart(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
    extra_namespaces: list[str],
    tmp_path: Path,
) -> None:
    """ECR (static keys: moto's tokens "expired in 2015", so reusable for the 5 minutes such
    a token is kept), GCP (a service-account key) and ACR (a client secret and the exchange),
    against their stand-ins: after a restart none of them is asked again, no copy is
    rewritten and no status changes."""
    basic, token = registries.basic, registries.token
    assert registries.token_server is not None
    target = extra_namespaces[0]
    registries.set_user("basic", "AWS", MOTO_PASSWORD)
    aws = AwsStandIn().start()
    google = GoogleStandIn(lambda user, password: registries.set_user("basic", user, password))
    google.start()
    azure = AzureStandIn(registries.ca, tmp_path / "azure", registries.token_server.add_user)
    azure.client_secrets["11111111-2222-3333-4444-555555555555"] = "app-s3cret"
    azure.start()
    bundle = tmp_path / "roots.pem"  # MSAL must trust the stand-in: system roots + test CA
    system = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    bundle.write_text(system.read_text() + registries.ca_file.read_text())
    names = ["ecr-r", "gar-r", "acr-r"]
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object("aws-keys", namespace, accessKeyId="AKIDRESTART", secretAccessKey="k"),
            secret_object(
                "gcp-key", namespace, **{"key.json": _service_account_key(google.token_uri)}
            ),
            secret_object("acr-app", namespace, clientSecret="app-s3cret"),
        )
        args = (
            "--credentials-namespace", namespace, "--aws-endpoint-url", aws.url,
            "--gcp-token-uri", google.token_uri,
            "--azure-authority-host", azure.authority_host,
            "--acr-exchange-url", azure.exchange_url,
        )  # fmt: skip
        env = {
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "eu-west-1",
            "REQUESTS_CA_BUNDLE": str(bundle), "SSL_CERT_FILE": str(bundle),
        }  # fmt: skip
        operator = run_operator(*args, env=env)
        acr = {
            "acr": {
                "tenantId": "ocireg-test-tenant",
                "clientId": "11111111-2222-3333-4444-555555555555",
                "credentials": {"secretRef": {"name": "acr-app"}},
            }
        }
        ecr = {
            "ecr": {"regions": ["eu-west-1"], "credentials": {"secretRef": {"name": "aws-keys"}}}
        }
        gcp = {"gcp": {"credentials": {"secretRef": {"name": "gcp-key"}}}}
        apply(
            cluster,
            cluster_registry("ecr-r", basic.host, ecr, target),
            cluster_registry("gar-r", basic.host, gcp, target),
            cluster_registry("acr-r", token.host, acr, target),
        )
        for name in names:
            wait_for_reason(cluster, CLUSTER, name, "Ready")
        time.sleep(12)

        def minted() -> tuple[int, int, int, int]:
            return (
                aws.calls["GetAuthorizationToken"],
                google.calls["POST /token"],
                azure.calls["token"],
                azure.calls["exchange"],
            )

        assert minted() == (1, 1, 1, 1)
        copies = [(target, n) for n in names]
        before = versions(cluster, copies)
        statuses = {n: registry(cluster, CLUSTER, n)["status"] for n in names}

        stop_and_restart(run_operator, operator, args, 3, env)

        assert minted() == (1, 1, 1, 1), "a cloud token was minted again after the restart"
        assert versions(cluster, copies) == before
        for name in names:
            assert registry(cluster, CLUSTER, name)["status"] == statuses[name], name
    finally:
        for name in names:
            cluster.kubectl("delete", "clusterociregistry", name, "--wait=false", check=False)
        aws.stop()
        google.stop()
        azure.stop()
