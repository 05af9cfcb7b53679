"""Cloud and webhook credentials on the real control plane, the SDKs running their real code
against local stand-ins (moto for ECR/STS, a Google token endpoint and metadata server, an
Entra ID + ACR exchange endpoint, a webhook). Minted tokens are accepted by the real local
registry, so every pull secret is checked with skopeo."""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ocireg_devenv.clients import Clients, docker_config, write_docker_config
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries
from ocireg_devenv.standins import (
    AwsStandIn,
    AzureStandIn,
    Fault,
    GoogleStandIn,
    Reply,
    StandIn,
    jwt_like,
)

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    ca_config_map,
    condition,
    events_for,
    minting_webhook,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
    webhook_auth,
)

CLUSTER = "ClusterOCIRegistry"
TENANT = "OCIRegistry"
TEAM_KEY = "wJalrXUtnFEMI-team-one-secret-key"
MOTO_PASSWORD = "123456789012-auth-token"  # moto's answer for its default account


@pytest.fixture(scope="module")
def image(registries: LocalRegistries, clients: Clients, tmp_path_factory) -> str:
    basic = registries.basic
    pusher = write_docker_config(
        tmp_path_factory.mktemp("pusher"),
        docker_config({basic.host: (basic.username, basic.password)}),
    ).parent
    ref = f"{basic.host}/cloud/app:1"
    clients.push_image(ref, b"cloud", pusher)
    return ref


def pulls(clients: Clients, image: str, pull_secret: dict, tmp_path: Path) -> bool:
    authfile = tmp_path / f"auth-{secrets.token_hex(3)}.json"
    authfile.write_bytes(base64.b64decode(pull_secret["data"][".dockerconfigjson"]))
    return clients.skopeo_pull(image, authfile, tmp_path / "pulled").returncode == 0


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def entry(pull_secret: dict, host: str) -> dict:
    config = json.loads(base64.b64decode(pull_secret["data"][".dockerconfigjson"]))
    return config["auths"][host]


def cluster_registry(name: str, server: str, auth: dict, target: str, **extra: object) -> dict:
    spec = {
        "server": server,
        "auth": auth,
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
        "targets": {"namespaces": [target], "secretName": name},
        **extra,
    }
    return registry_object(CLUSTER, name, spec)


@pytest.fixture
def target(cluster: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"{namespace}-t"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def delete_all(cluster: ControlPlane, kind: str, names: list[str], namespace: str | None = None):
    args = ["-n", namespace] if namespace else []
    for name in names:
        cluster.kubectl(
            "delete", kind, name, *args, "--ignore-not-found", "--wait=false", check=False
        )


# ---------------------------------------------------------------------------- AWS ECR


def test_ecr_static_keys_web_identity_shared_mints_and_failures(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    target: str,
    image: str,
    tmp_path: Path,
) -> None:
    basic = registries.basic
    registries.set_user("basic", "AWS", MOTO_PASSWORD)
    aws = AwsStandIn().start()
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object(
                "aws-keys", namespace, accessKeyId="AKIDTEAMONE", secretAccessKey=TEAM_KEY
            ),
            secret_object("aws-other", namespace, accessKeyId="AKIDTEAMTWO", secretAccessKey="k2"),
        )
        operator = run_operator(
            "--credentials-namespace", namespace, "--aws-endpoint-url", aws.url,
            *ALLOW_LOCAL_REGISTRIES,  # the tenant's object below uses the local registry
            env={"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "AKIDOPERATOR",
                 "AWS_SECRET_ACCESS_KEY": "operator", "AWS_DEFAULT_REGION": "eu-west-1"},
        )  # fmt: skip
        keys = {
            "ecr": {"regions": ["eu-west-1"], "credentials": {"secretRef": {"name": "aws-keys"}}}
        }
        apply(
            cluster,
            cluster_registry("ecr-a", basic.host, keys, target),
            cluster_registry("ecr-b", basic.host, keys, target),
        )
        for name in ("ecr-a", "ecr-b"):
            wait_for_reason(cluster, CLUSTER, name, "Ready")
        # Two objects, one identity and region: one mint.
        assert aws.calls["GetAuthorizationToken"] == 1
        written = secret(cluster, target, "ecr-a")
        assert entry(written, basic.host)["username"] == "AWS"
        assert pulls(clients, image, written, tmp_path)
        status = cluster.get_json("clusterociregistry", "ecr-a")["status"]
        # moto issues tokens that expired in 2015: shown, explained, and no hot loop.
        assert status["credentials"]["expiresAt"].startswith("2015-01-01")
        assert (
            "already expired" in condition(cluster, CLUSTER, "ecr-a", "CredentialsReady")["message"]
        )

        # A tenant uses its own IAM role through its ServiceAccount's token.
        role = "arn:aws:iam::123456789012:role/team-puller"
        apply(
            cluster,
            registry_object(
                TENANT,
                "own-role",
                {
                    "server": basic.host,
                    "auth": {"ecr": {"regions": ["eu-west-1"], "roleArn": role,
                                     "credentials": {"serviceAccountRef": {"name": "default"}}}},
                    "tls": {"insecureSkipVerify": True},
                },
                target,
            ),
        )  # fmt: skip
        wait_for_reason(cluster, TENANT, "own-role", "Ready", target)
        assert aws.calls["AssumeRoleWithWebIdentity"] == 1
        claims = jwt_claims(aws.web_identity_tokens[-1])  # a real token from the API server
        assert claims["sub"] == f"system:serviceaccount:{target}:default"
        assert claims["aud"] == ["sts.amazonaws.com"]
        # ...and cannot fall back to the operator's identity: refused at apply time.
        refused = cluster.kubectl(
            "apply", "-f", "-", check=False,
            input=json.dumps(registry_object(TENANT, "ambient", {
                "server": basic.host, "auth": {"ecr": {"regions": ["eu-west-1"]}}}, target)),
        )  # fmt: skip
        assert refused.returncode != 0
        assert "must set credentials" in refused.stderr

        # A failing provider: the condition says so, the Event is posted, then it recovers.
        # Two failed mints (the SDK tries each twice), then success after our backoff.
        before = aws.calls["GetAuthorizationToken"]
        aws.fail_next("GetAuthorizationToken", 4, Fault(500, b'{"__type":"ServerException"}'))
        other = {
            "ecr": {"regions": ["eu-west-1"], "credentials": {"secretRef": {"name": "aws-other"}}}
        }
        apply(cluster, cluster_registry("ecr-c", basic.host, other, target))
        failing = wait_for_reason(cluster, CLUSTER, "ecr-c", "ProviderError")
        assert "GetAuthorizationToken" in failing["message"]
        assert condition(cluster, CLUSTER, "ecr-c", "Reconciling")["status"] == "True"
        assert any(e["reason"] == "ProviderError" for e in events_for(cluster, "ecr-c"))
        wait_for_reason(cluster, CLUSTER, "ecr-c", "Ready", timeout=90)

        # Two more ticks of every object later: no new mint for anyone, although moto's tokens
        # "expired in 2015"; ecr-c made 4 failed calls and 1 good one.
        time.sleep(22)
        assert aws.calls["GetAuthorizationToken"] == before + 5
        assert TEAM_KEY not in operator.logs()
    finally:
        delete_all(cluster, "clusterociregistry", ["ecr-a", "ecr-b", "ecr-c"])
        aws.stop()


# ---------------------------------------------------------------------------- webhook


def test_webhook_rotation_failure_and_tenant_address_guard(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    target: str,
    image: str,
    tmp_path: Path,
) -> None:
    basic = registries.basic
    hook = minting_webhook(registries, "let-me-in", 40)
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object("hook-headers", namespace, **{"X-Api-Key": "let-me-in"}),
        )
        operator = run_operator("--credentials-namespace", namespace)
        auth = webhook_auth(hook)
        apply(
            cluster,
            cluster_registry("hook", basic.host, auth, target, refresh={"renewBefore": "50%"}),
        )
        wait_for_reason(cluster, CLUSTER, "hook", "Ready")
        first = secret(cluster, target, "hook")
        assert pulls(clients, image, first, tmp_path)
        credentials = cluster.get_json("clusterociregistry", "hook")["status"]["credentials"]
        assert {"expiresAt", "refreshedAt", "nextRefreshAt"} <= set(credentials)

        # Renewed at half of its 40 s life (plus jitter and a tick): every copy rewritten,
        # the new token works, the old one no longer does.
        rotated = wait_for(
            lambda: (s := secret(cluster, target, "hook")) and s["data"] != first["data"] and s,
            45,
            "the pull secret to be renewed",
        )
        assert pulls(clients, image, rotated, tmp_path)
        assert not pulls(clients, image, first, tmp_path)
        assert any(e["reason"] == "CredentialsRenewed" for e in events_for(cluster, "hook"))

        # The webhook starts answering garbage: condition + Warning Event, Secret kept.
        hook.malformed_next = 1000
        failed = wait_for_reason(
            cluster, CLUSTER, "hook", "InvalidProviderAnswer", type_="CredentialsReady", timeout=60
        )
        assert failed["status"] == "False"
        kept = secret(cluster, target, "hook")
        assert kept["data"] != {}
        assert any(e["reason"] == "InvalidProviderAnswer" for e in events_for(cluster, "hook"))
        hook.malformed_next = 0
        wait_for_reason(cluster, CLUSTER, "hook", "Ready", timeout=90)
        assert pulls(clients, image, secret(cluster, target, "hook"), tmp_path)

        # Rate limited at the next renewal: the wait the webhook asks for is honoured.
        hook.fail_next("GET /credentials", 1, Fault(429, b"slow down", retry_after=30))
        limited = wait_for_reason(
            cluster, CLUSTER, "hook", "WebhookError", type_="CredentialsReady", timeout=60
        )
        assert "429" in limited["message"]
        waiting = condition(cluster, CLUSTER, "hook", "Reconciling")["message"]
        assert int(waiting.split("retrying in ")[1].split("s")[0]) >= 25
        wait_for_reason(cluster, CLUSTER, "hook", "Ready", timeout=90)

        # A tenant cannot point a webhook at loopback (nor metadata or private ranges).
        apply(
            cluster,
            secret_object("hook-headers", target, **{"X-Api-Key": "let-me-in"}),
            registry_object(TENANT, "sneaky", {"server": basic.host, "auth": auth}, target),
        )
        refused = wait_for_reason(cluster, TENANT, "sneaky", "WebhookAddressNotAllowed", target)
        assert "127.0.0.1" in refused["message"]
        assert hook.calls  # the cluster object did call it...
        logs = operator.logs()
        assert "let-me-in" not in logs
    finally:
        delete_all(cluster, "clusterociregistry", ["hook"])
        hook.stop()


# ---------------------------------------------------------------------------- GCP


def _service_account_key(token_uri: str) -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "ocireg-test",
            "private_key_id": secrets.token_hex(8),
            "private_key": pem,
            "client_email": "puller@ocireg-test.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": token_uri,
        }
    )


def test_gcp_key_and_metadata_server(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    target: str,
    image: str,
    tmp_path: Path,
) -> None:
    basic = registries.basic
    google = GoogleStandIn(lambda user, password: registries.set_user("basic", user, password))
    google.start()
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object(
                "gcp-key", namespace, **{"key.json": _service_account_key(google.token_uri)}
            ),
            secret_object("gcp-broken", namespace, **{"key.json": "{not json"}),
        )
        run_operator(
            "--credentials-namespace", namespace, "--gcp-token-uri", google.token_uri,
            "--ambient-gcp-host", basic.host.split(":")[0],  # the stand-in for gcr.io
            env={"GCE_METADATA_HOST": google.metadata_host, "GCE_METADATA_IP": google.metadata_host,
                 "GOOGLE_CLOUD_PROJECT": "ocireg-test"},
        )  # fmt: skip
        apply(
            cluster,
            cluster_registry(
                "gar",
                basic.host,
                {"gcp": {"credentials": {"secretRef": {"name": "gcp-key"}}}},
                target,
            ),
            cluster_registry(
                "gar-broken",
                basic.host,
                {"gcp": {"credentials": {"secretRef": {"name": "gcp-broken"}}}},
                target,
            ),
        )
        wait_for_reason(cluster, CLUSTER, "gar", "Ready")
        written = secret(cluster, target, "gar")
        assert entry(written, basic.host)["username"] == "oauth2accesstoken"
        assert pulls(clients, image, written, tmp_path)
        assert google.calls["POST /token"] == 1
        broken = wait_for_reason(cluster, CLUSTER, "gar-broken", "InvalidSecret")
        assert "gcp-broken" in broken["message"]

        # The operator's own identity (the metadata server), for the cluster kind.
        apply(cluster, cluster_registry("gar-ambient", basic.host, {"gcp": {}}, target))
        wait_for_reason(cluster, CLUSTER, "gar-ambient", "Ready")
        assert pulls(clients, image, secret(cluster, target, "gar-ambient"), tmp_path)
        assert any("service-accounts/default/token" in call for call in google.calls)
    finally:
        delete_all(cluster, "clusterociregistry", ["gar", "gar-broken", "gar-ambient"])
        google.stop()


# ---------------------------------------------------------------------------- Azure ACR


def test_acr_client_secret_exchange(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    target: str,
    tmp_path: Path,
) -> None:
    # ACR refresh tokens are long JWTs; htpasswd (bcrypt) stops at 72 bytes, so the registry
    # here is the Bearer-token one, whose token server compares whole passwords.
    registry = registries.token
    token_server = registries.token_server
    assert token_server is not None
    pusher = write_docker_config(
        tmp_path / "pusher", docker_config({registry.host: (registry.username, registry.password)})
    ).parent
    image = f"{registry.host}/acr/app:1"
    clients.push_image(image, b"acr", pusher)
    azure = AzureStandIn(registries.ca, tmp_path / "azure", token_server.add_user)
    azure.client_secrets["11111111-2222-3333-4444-555555555555"] = "app-s3cret"
    azure.start()
    # azure-identity (MSAL) must trust the stand-in's certificate: the system roots plus the
    # test CA, for this operator process only.
    bundle = tmp_path / "roots.pem"
    system = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    bundle.write_text(system.read_text() + registries.ca_file.read_text())
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object("acr-app", namespace, clientSecret="app-s3cret"),
        )
        operator = run_operator(
            "--credentials-namespace", namespace,
            "--azure-authority-host", azure.authority_host,
            "--acr-exchange-url", azure.exchange_url,
            *ALLOW_LOCAL_REGISTRIES,  # the tenant's object below uses the local registry
            "--ambient-acr-host", registry.host.split(":")[0],  # the stand-in for *.azurecr.io
            env={"REQUESTS_CA_BUNDLE": str(bundle), "SSL_CERT_FILE": str(bundle),
                 "IDENTITY_ENDPOINT": azure.identity_endpoint,
                 "IDENTITY_HEADER": azure.IDENTITY_HEADER},
        )  # fmt: skip
        auth = {
            "acr": {
                "tenantId": "ocireg-test-tenant",
                "clientId": "11111111-2222-3333-4444-555555555555",
                "credentials": {"secretRef": {"name": "acr-app"}},
            }
        }
        apply(cluster, cluster_registry("acr", registry.host, auth, target))
        wait_for_reason(cluster, CLUSTER, "acr", "Ready")
        written = secret(cluster, target, "acr")
        assert entry(written, registry.host)["username"] == "00000000-0000-0000-0000-000000000000"
        assert pulls(clients, image, written, tmp_path)
        assert azure.calls["exchange"] == 1
        expires = cluster.get_json("clusterociregistry", "acr")["status"]["credentials"][
            "expiresAt"
        ]
        assert expires > time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 2 * 3600))
        # A tenant with workload identity: its ServiceAccount's token is the client assertion.
        workload = {
            "acr": {
                "tenantId": "ocireg-test-tenant",
                "clientId": "66666666-7777-8888-9999-000000000000",
                "credentials": {"serviceAccountRef": {"name": "default"}},
            }
        }
        apply(
            cluster,
            registry_object(
                TENANT,
                "workload",
                {"server": registry.host, "auth": workload, "tls": {"insecureSkipVerify": True}},
                target,
            ),
        )
        wait_for_reason(cluster, TENANT, "workload", "Ready", target)
        assert pulls(clients, image, secret(cluster, target, "workload"), tmp_path)
        # The assertion is a real token from the API server for that ServiceAccount.
        claims = jwt_claims(azure.assertions[-1])
        assert claims["sub"] == f"system:serviceaccount:{target}:default"
        assert claims["aud"] == ["api://AzureADTokenExchange"]
        # The operator's own managed identity, for a host the operator allows it.
        managed = {"acr": {"clientId": "99999999-8888-7777-6666-555555555555"}}
        apply(cluster, cluster_registry("acr-managed", registry.host, managed, target))
        wait_for_reason(cluster, CLUSTER, "acr-managed", "Ready")
        assert pulls(clients, image, secret(cluster, target, "acr-managed"), tmp_path)
        assert azure.calls["managed-identity"] == 1
        assert "app-s3cret" not in operator.logs()
    finally:
        delete_all(cluster, "clusterociregistry", ["acr", "acr-managed"])
        azure.stop()


# ---------------------------------------------------------------------------- ambient tokens


class HostileRegistry(StandIn):
    """A registry a tenant controls: it records every request and plays along (asks for Basic
    credentials, answers the ACR exchange) so that any token offered would be handed over."""

    name = "hostile-registry"

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[str, str, dict[str, str], bytes]] = []

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> Reply:
        self.received.append((method, path, dict(headers.items()), body))
        if urlparse(path).path == "/oauth2/exchange":
            refresh = jwt_like({"exp": int(time.time()) + 3600})
            return Reply(200, json.dumps({"refresh_token": refresh}).encode())
        if headers.get("Authorization"):
            return Reply(200, b"{}")
        return Reply(401, b"{}", headers={"WWW-Authenticate": 'Basic realm="hostile"'})


def test_ambient_tokens_never_reach_a_host_their_cloud_does_not_run(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
    target: str,
    tmp_path: Path,
) -> None:
    """With --allow-tenant-ambient-identity, a tenant names its own server for the operator's
    Azure managed identity, GCP metadata identity and AWS default chain; a cluster object does
    the same for Azure. The server receives nothing, no token is even minted, and each object
    says why."""
    hostile = HostileRegistry().start()
    aws = AwsStandIn().start()
    google = GoogleStandIn(lambda user, password: None).start()
    azure = AzureStandIn(registries.ca, tmp_path / "azure", lambda user, password: None).start()
    bundle = tmp_path / "roots.pem"
    system = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    bundle.write_text(system.read_text() + registries.ca_file.read_text())
    try:
        run_operator(
            "--credentials-namespace", namespace, "--allow-tenant-ambient-identity",
            "--aws-endpoint-url", aws.url, *ALLOW_LOCAL_REGISTRIES,
            env={"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "AKIDOPERATOR",
                 "AWS_SECRET_ACCESS_KEY": "operator-secret", "AWS_DEFAULT_REGION": "eu-west-1",
                 "GCE_METADATA_HOST": google.metadata_host,
                 "GCE_METADATA_IP": google.metadata_host, "GOOGLE_CLOUD_PROJECT": "ocireg-test",
                 "IDENTITY_ENDPOINT": azure.identity_endpoint,
                 "IDENTITY_HEADER": azure.IDENTITY_HEADER,
                 "REQUESTS_CA_BUNDLE": str(bundle), "SSL_CERT_FILE": str(bundle)},
        )  # fmt: skip
        managed = {"acr": {"clientId": "99999999-8888-7777-6666-555555555555", "credentials": {}}}
        plain = {"insecure": True}  # the most a hostile server could ask for
        tenants = {
            "acr-ambient": managed,
            "gcp-ambient": {"gcp": {"credentials": {}}},
            "ecr-ambient": {"ecr": {"regions": ["eu-west-1"], "credentials": {}}},
        }
        apply(
            cluster,
            *(
                registry_object(TENANT, name, {"server": hostile.host, "auth": auth, "tls": plain},
                                target)
                for name, auth in tenants.items()
            ),
            registry_object(CLUSTER, "acr-ambient-cluster", {
                "server": hostile.host, "auth": managed, "tls": plain,
                "targets": {"namespaces": [target]}}),
        )  # fmt: skip
        objects = [(TENANT, name, target) for name in tenants]
        objects.append((CLUSTER, "acr-ambient-cluster", None))
        for kind, name, where in objects:
            wait_for(
                lambda k=kind, n=name, w=where: condition(cluster, k, n, "CredentialsReady", w),
                60,
                f"{kind} {name} to report on its credentials",
            )
        # Nothing reached the tenant's server: no exchange, no ping, no Basic login.
        offered = [
            f"{method} {urlparse(path).path}"
            + (" carrying a token" if "Authorization" in headers or b"access_token" in body else "")
            for method, path, headers, body in hostile.received
        ]
        assert not offered, f"the tenant's server got: {offered}"
        # Refused before the cloud was asked: no token of the operator's was even minted.
        assert azure.calls["managed-identity"] == 0
        assert not any("service-accounts/default/token" in call for call in google.calls)
        assert aws.calls["GetAuthorizationToken"] == 0
        for kind, name, where in objects:
            ready = condition(cluster, kind, name, "Ready", where)
            assert ready["reason"] == "AmbientDestinationNotAllowed", ready
            assert hostile.host.split(":")[0] in ready["message"]
            assert "--ambient-" in ready["message"]
            assert condition(cluster, kind, name, "Stalled", where)["status"] == "True"
            assert any(
                e["reason"] == "AmbientDestinationNotAllowed" for e in events_for(cluster, name)
            )
            assert secret(cluster, target, name) is None  # no pull secret with its token
    finally:
        delete_all(cluster, "clusterociregistry", ["acr-ambient-cluster"])
        for standin in (hostile, aws, google, azure):
            standin.stop()
