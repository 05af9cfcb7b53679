"""The keyring tier: every kind of pull secret ocireg writes, read by the kubelet's own
keyring code (``kube-local keyring``: pkg/credentialprovider, as the kubelet's image manager
calls it), then pulled with crane using exactly the credentials it printed, in its order.

Cheap and always on (no root, no containerd): it is where a key the kubelet does not match,
or a field it does not read, shows up first. The kubelet tier (test_kubelet_pulls.py) then
proves the same through a real kubelet and containerd."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from ocireg.api.credential import Credential
from ocireg.providers import acr, gcp
from ocireg.pullsecrets.plan import docker_config_json
from ocireg_devenv.clients import Clients, docker_config, write_docker_config
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.processes import Tools
from ocireg_devenv.registries import LocalRegistries, RegistryServer

from .helpers import (
    apply,
    ca_config_map,
    pull_secret_refs,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
)
from .kubelet_keyring import kubelet_credentials, pull_like_the_kubelet, secret_objects

CLUSTER = "ClusterOCIRegistry"


def pushed(clients: Clients, registry: RegistryServer, repo: str, workdir: Path) -> str:
    image = f"{registry.host}/{repo}-{secrets.token_hex(3)}:1"
    if registry.tls:
        pusher = write_docker_config(
            workdir / f"push-{secrets.token_hex(3)}",
            docker_config({registry.host: (registry.username, registry.password)}),
        ).parent
        clients.push_image(image, repo.encode(), pusher)
    else:
        empty = write_docker_config(workdir / f"push-{secrets.token_hex(3)}", {"auths": {}})
        clients.push_image(image, repo.encode(), empty.parent, insecure=True)
    return image


def hand_made(name: str, namespace: str, config: bytes) -> dict:
    """A pull Secret as the API would return it, holding ``config``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "uid": secrets.token_hex(8)},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config).decode()},
    }


@pytest.fixture
def target(cluster: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"{namespace}-t"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_every_auth_method_gives_the_kubelet_credentials_that_pull(
    cluster: ControlPlane,
    crds: None,
    tools: Tools,
    registries: LocalRegistries,
    clients: Clients,
    run_operator: Callable[..., OperatorProcess],
    namespace: str,
    target: str,
    tmp_path: Path,
) -> None:
    """Four registry objects for one namespace (basic with a repositoryPrefix and
    dockerConfig, both for the htpasswd registry; anonymous for the plain one; basic for the
    token registry): for each image the kubelet picks the Secrets for that host only, in the
    ServiceAccount's order, and the credentials it picks pull."""
    basic, token, plain = registries.basic, registries.token, registries.plain
    images = {
        "basic": pushed(clients, basic, "team-a/app", tmp_path),
        "token": pushed(clients, token, "team/app", tmp_path),
        "plain": pushed(clients, plain, "public/app", tmp_path),
    }
    existing = docker_config({basic.host: (basic.username, basic.password)})
    apply(
        cluster,
        ca_config_map(namespace, registries.ca_file),
        secret_object("basic-login", namespace, username=basic.username, password=basic.password),
        secret_object("token-login", namespace, username=token.username, password=token.password),
        secret_object("existing", namespace, **{".dockerconfigjson": json.dumps(existing)}),
    )
    run_operator("--credentials-namespace", namespace)
    tls = {"caBundleRef": {"configMap": "registry-ca"}}
    stem = secrets.token_hex(3)
    objects = {
        f"kr-basic-{stem}": {
            "server": basic.host,
            "repositoryPrefix": "team-a",
            "auth": {"basic": {"secretRef": {"name": "basic-login"}}},
            "tls": tls,
        },
        f"kr-existing-{stem}": {
            "server": basic.host,
            "auth": {"dockerConfig": {"secretRef": {"name": "existing"}}},
            "tls": tls,
        },
        f"kr-anonymous-{stem}": {
            "server": plain.host,
            "auth": {"anonymous": {}},
            "tls": {"insecure": True},
        },
        f"kr-token-{stem}": {
            "server": token.host,
            "auth": {"basic": {"secretRef": {"name": "token-login"}}},
            "tls": tls,
        },
    }
    try:
        for name, spec in objects.items():
            spec["targets"] = {"namespaces": [target], "secretName": name}
            apply(cluster, registry_object(CLUSTER, name, spec))
        for name in objects:
            wait_for_reason(cluster, CLUSTER, name, "Ready", timeout=60)
        # Anonymous access writes no Secret (docs/providers/static.md): nothing to put in it.
        written = {name for name in objects if "anonymous" not in name}
        wait_for(
            lambda: set(pull_secret_refs(cluster, target)) == written,
            60,
            "the default ServiceAccount to refer to every pull secret",
        )
        assert secret(cluster, target, f"kr-anonymous-{stem}") is None
        refs = pull_secret_refs(cluster, target)
        # What a pod using `default` hands the kubelet: every Secret, in this order.
        pulled_with = secret_objects(cluster, target, refs)
        by_host = {
            "basic": {f"kr-basic-{stem}", f"kr-existing-{stem}"},
            "token": {f"kr-token-{stem}"},
            "plain": set(),  # nothing matches: the kubelet pulls without credentials
        }
        for kind, image in images.items():
            found = kubelet_credentials(tools, image, pulled_with, tmp_path / kind)
            sources = [c["secret"].split("/", 1)[1] for c in found]
            assert set(sources) == by_host[kind], (kind, sources)
            assert sources == [r for r in refs if r in by_host[kind]]  # the pod's order
            result = pull_like_the_kubelet(
                clients, image, found, tmp_path / kind, insecure=kind == "plain"
            )
            assert result.pulled, (kind, result.errors)
            if kind == "plain":
                assert result.used is None  # no credential: anonymously
            else:
                assert result.used == 0, (kind, result.errors)
                username = basic.username if kind == "basic" else token.username
                assert found[0]["username"] == username
        # Every entry for the htpasswd registry works on its own too (the kubelet would
        # fall back to the second if the first were refused).
        only_existing = secret_objects(cluster, target, [f"kr-existing-{stem}"])
        found = kubelet_credentials(tools, images["basic"], only_existing, tmp_path / "existing")
        assert pull_like_the_kubelet(clients, images["basic"], found, tmp_path).pulled
    finally:
        for name in objects:
            cluster.kubectl("delete", "clusterociregistry", name, "--wait=false", check=False)


def test_the_kubelet_matches_host_and_port_as_written(
    tools: Tools, registries: LocalRegistries, clients: Clients, tmp_path: Path
) -> None:
    """The bytes ocireg's plan writes for the htpasswd registry, and the same credential
    keyed by another spelling of the address (what a bug in ocireg could write): the kubelet
    finds nothing for the second, and the pull is refused. Other ports and hosts get
    nothing either."""
    basic = registries.basic
    image = pushed(clients, basic, "keys/app", tmp_path)
    host, port = basic.host.rsplit(":", 1)

    def written_for(key: str) -> dict:
        credential = Credential("basic", (key,), basic.username, basic.password)
        return hand_made(f"for-{secrets.token_hex(2)}", "team", docker_config_json(credential))

    right = kubelet_credentials(tools, image, [written_for(basic.host)], tmp_path)
    assert [c["username"] for c in right] == [basic.username]
    assert pull_like_the_kubelet(clients, image, right, tmp_path).pulled

    for wrong_key in (f"localhost:{port}", host, f"{host}:{int(port) + 1}"):
        found = kubelet_credentials(tools, image, [written_for(wrong_key)], tmp_path)
        assert found == [], wrong_key
        refused = pull_like_the_kubelet(clients, image, found, tmp_path)
        assert not refused.pulled
        assert "401" in refused.errors[0] or "UNAUTHORIZED" in refused.errors[0]

    # A scheme and the /v2/ suffix are tolerated by the kubelet, a path is a scope.
    def sent(found: list[dict]) -> list[tuple[str, str]]:
        return [(c["username"], c["password"]) for c in found]

    with_scheme = written_for(f"https://{basic.host}/v2/")
    assert sent(kubelet_credentials(tools, image, [with_scheme], tmp_path)) == sent(right)
    assert kubelet_credentials(tools, image, [written_for(f"{basic.host}/other")], tmp_path) == []


def test_token_method_pull_secrets_are_not_read_by_the_kubelet(
    tools: Tools, registries: LocalRegistries, clients: Clients, tmp_path: Path
) -> None:
    """A known limit, pinned: the kubelet's keyring keeps only username, password (or
    auth) from a pull secret and drops identitytoken and registrytoken, so the Secrets
    ocireg writes for `auth.token` give the kubelet no usable credential, while crane with
    the same Docker config pulls. docs/providers/static.md says so."""
    token = registries.token
    assert registries.token_server is not None
    image = pushed(clients, token, "tokens/app", tmp_path)
    refresh = registries.token_server.issue_refresh_token(token.username)
    repository = image.split("/", 1)[1].rsplit(":", 1)[0]
    bearer = requests.get(
        registries.token_server.realm,
        params={"service": token.host, "scope": f"repository:{repository}:pull"},
        auth=(token.username, token.password),
        verify=str(registries.ca_file),
        timeout=10,
    ).json()["token"]
    cases = {
        "IdentityToken": Credential("token", (token.host,), token.username, identity_token=refresh),
        "RegistryToken": Credential("token", (token.host,), None, registry_token=bearer),
    }
    for kind, credential in cases.items():
        config = docker_config_json(credential)
        # Other clients read the token: crane pulls with the Docker config as written.
        crane_dir = write_docker_config(tmp_path / f"crane-{kind}", json.loads(config)).parent
        pulled = clients.crane("pull", image, str(crane_dir / "i.tar"), docker_config_dir=crane_dir)
        assert pulled.returncode == 0, (kind, pulled.stderr)

        found = kubelet_credentials(tools, image, [hand_made(kind.lower(), "t", config)], tmp_path)
        assert len(found) == 1
        assert not {"identitytoken", "registrytoken", "password"} & found[0].keys(), found
        assert not pull_like_the_kubelet(clients, image, found, tmp_path).pulled, kind


def test_docker_hub_keys_are_found_for_the_names_users_write(tools: Tools, tmp_path: Path) -> None:
    """A registry object for docker.io is written under Docker's legacy key; the kubelet
    finds it for short names, library images and explicit docker.io references. (No pull:
    these machines do not reach Docker Hub.)"""
    credential = Credential("basic", ("docker.io",), "hub-user", "hub-password-123")
    config = docker_config_json(credential)
    assert list(json.loads(config)["auths"]) == ["https://index.docker.io/v1/"]
    hub = [hand_made("hub", "team", config)]
    for image in ("nginx", "nginx:1.27", "team/app:1", "docker.io/team/app:1",
                  "docker.io/library/nginx", "index.docker.io/team/app:1"):  # fmt: skip
        found = kubelet_credentials(tools, image, hub, tmp_path)
        assert [(c["username"], c["password"]) for c in found] == [
            ("hub-user", "hub-password-123")
        ], image
    assert kubelet_credentials(tools, "ghcr.io/team/app:1", hub, tmp_path) == []


def test_ecr_region_entries_each_go_to_their_own_host(
    tools: Tools, registries: LocalRegistries, clients: Clients, tmp_path: Path
) -> None:
    """A `{region}` server with two regions is one Secret with one entry per region, each
    with that region's token: the kubelet sends each image's region its own token. The local
    registry accepts the eu-west-1 token only, standing in for that region's endpoint."""
    server = "123456789012.dkr.ecr.{region}.amazonaws.com"
    hosts = {region: server.replace("{region}", region) for region in ("eu-west-1", "us-east-2")}
    passwords = {region: f"ecr-{region}-{secrets.token_hex(6)}" for region in hosts}
    credential = Credential(
        "ecr",
        tuple(hosts.values()),
        "AWS",
        passwords["eu-west-1"],
        passwords=tuple((hosts[r], passwords[r]) for r in hosts),
    )
    ecr = [hand_made("ecr", "team", docker_config_json(credential))]
    chosen = {}
    for region, host in hosts.items():
        found = kubelet_credentials(tools, f"{host}/team/app:1", ecr, tmp_path)
        assert [c["password"] for c in found] == [passwords[region]], region
        chosen[region] = found

    basic = registries.basic
    registries.set_user("basic", "AWS", passwords["eu-west-1"])
    image = pushed(clients, basic, "ecr/app", tmp_path)
    assert pull_like_the_kubelet(clients, image, chosen["eu-west-1"], tmp_path).pulled
    assert not pull_like_the_kubelet(clients, image, chosen["us-east-2"], tmp_path).pulled


def test_cloud_provider_credentials_reach_the_kubelet_as_username_and_password(
    tools: Tools, registries: LocalRegistries, clients: Clients, tmp_path: Path
) -> None:
    """GCP, ACR, ECR and webhook credentials are written as username and password (GCP's
    oauth2accesstoken and ACR's null-GUID user with the provider's token), which the kubelet
    reads; the registry, taught each token, lets the kubelet's choice pull. (Minting them
    for real is test_cloud_credentials.py; the ECR and webhook mints go through a real
    kubelet in test_kubelet_pulls.py.)"""
    basic = registries.basic
    image = pushed(clients, basic, "cloud/app", tmp_path)
    users = {"gcp": gcp.USERNAME, "acr": acr.USERNAME, "ecr": "AWS", "webhook": "robot"}
    for provider, username in users.items():
        token = f"{provider}-token-{secrets.token_hex(8)}"
        credential = Credential(provider, (basic.host,), username, token)
        pull_secret = hand_made(provider, "team", docker_config_json(credential))
        found = kubelet_credentials(tools, image, [pull_secret], tmp_path / provider)
        assert [(c["username"], c["password"]) for c in found] == [(username, token)], provider
        assert not pull_like_the_kubelet(clients, image, found, tmp_path).pulled  # not yet known
        registries.set_user("basic", username, token)
        assert pull_like_the_kubelet(clients, image, found, tmp_path).pulled, provider
