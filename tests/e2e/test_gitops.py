"""GitOps tools reading what ocireg writes, on the real control plane and registries.

Argo CD: the repository credential Secrets of targets.argoCD are resolved by Argo CD's own
code (`argocd-repo`, tests/gitops/argocd: util/settings' informer and util/db's GetRepository from
the argo-cd Go module, over the real API server), and the chart is pulled exactly as Argo
CD's repo-server does with what it resolved (util/helm/client.go nativeHelmChart.ExtractChart
and util/helm/cmd.go RegistryLogin, PullOCI: `helm registry login <host of the URL>` with
username and password when both are set, then `helm pull oci://<url>/<chart> --version V`).

Flux: a pull Secret (kubernetes.io/dockerconfigjson) named by a source's secretRef is read
with the libraries source-controller reads it with (`flux-auth`, tests/gitops/flux), as its
two readers call them:
- OCIRepository (internal/controller/ocirepository_controller.go, keychain): the keychain of
  go-containerregistry's authn/kubernetes NewFromPullSecrets (the pull-secret part of the
  k8schain.NewFromPullSecrets it calls), with which the chart's manifest and layer are fetched;
- HelmRepository type oci (internal/helm/registry/auth.go, LoginOptionFromSecret): docker/cli's
  config file GetAuthConfig(host of spec.url), username and password both required; helm then
  logs in with them and pulls the chart, as Helm's registry client does with that basic auth.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ocireg_devenv.clients import Clients
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    apply,
    ca_config_map,
    minting_webhook,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
    webhook_auth,
)
from .test_charts import make_chart, push_chart, registry_config

ROOT = Path(__file__).resolve().parents[2]
GITOPS_BUILD = ROOT / "tests" / "gitops" / "build.sh"
CLUSTER = "ClusterOCIRegistry"


@pytest.fixture(scope="session")
def gitops_bin() -> Path:
    """The bin directory of argocd-repo and flux-auth (tests/gitops/build.sh, run by
    `make test` and `make e2e`)."""
    where = Path(
        subprocess.run(
            ["bash", str(GITOPS_BUILD), "--where"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    missing = [n for n in ("argocd-repo", "flux-auth") if not (where / n).exists()]
    if missing:
        reason = f"{', '.join(missing)} not built in {where}: run `bash {GITOPS_BUILD}`"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return where


@pytest.fixture(scope="session")
def argocd_repo(gitops_bin: Path) -> str:
    return str(gitops_bin / "argocd-repo")


def argocd_resolves(binary: str, cluster: ControlPlane, namespace: str, url: str) -> dict[str, Any]:
    """The repository Argo CD's util/db gives its repo-server for an Application whose
    source.repoURL is ``url``, from the Secrets in Argo CD's ``namespace``."""
    result = subprocess.run(
        [binary, f"--kubeconfig={cluster.admin_kubeconfig}", f"--namespace={namespace}",
         f"--url={url}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def helm_login_and_pull(
    clients: Clients, workdir: Path, repo: dict[str, Any], chart: str, version: str
) -> subprocess.CompletedProcess[str]:
    """What Argo CD's repo-server does with a Helm OCI repository it resolved (and Flux's
    source-controller with a HelmRepository's basic auth): with a fresh Helm registry config,
    `helm registry login <host>` when both username and password are set, then `helm pull
    oci://<url>/<chart>`. The local CA stands in for argocd-tls-certs-cm."""
    where = workdir / f"repo-server-{secrets.token_hex(4)}"
    where.mkdir(parents=True)
    config = where / "registry.json"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(where / "cache"),
        "HELM_CONFIG_HOME": str(where / "config"),
        "HELM_DATA_HOME": str(where / "data"),
    }
    helm = [clients.tools.path("helm")]
    ca = ["--ca-file", str(clients.ca_file), f"--registry-config={config}"]
    if repo["username"] and repo["password"]:
        host = urlsplit("//" + repo["url"]).netloc  # cmd.go getHelmRegistry
        login = subprocess.run(
            [*helm, "registry", "login", host, "--username", repo["username"],
             "--password-stdin", *ca],
            input=repo["password"], capture_output=True, text=True, env=env, timeout=60,
            check=False,
        )  # fmt: skip
        if login.returncode != 0:
            return login
    return subprocess.run(
        [*helm, "pull", f"oci://{repo['url']}/{chart}", "--version", version,
         "--destination", str(where), *ca],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def decoded(body: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}


def push_podinfo(clients: Clients, registries: LocalRegistries, tmp_path: Path, where: str) -> None:
    basic = registries.basic
    config = registry_config(tmp_path, f"push-{secrets.token_hex(3)}", basic)
    for version in ("1.0.0", "1.1.0"):
        push_chart(clients, basic, config, make_chart(clients, tmp_path, "podinfo", version), where)


def delete_registry(cluster: ControlPlane, name: str) -> None:
    cluster.kubectl("delete", "clusterociregistry", name, "--ignore-not-found", check=False)


# -- Argo CD ---------------------------------------------------------------------------------


def test_argo_cd_resolves_the_minted_repo_creds_and_pulls_the_chart_across_renewals(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    tmp_path: Path,
    argocd_repo: str,
) -> None:
    """A platform team's ClusterOCIRegistry with a token-minting webhook writes a repo-creds
    Secret into Argo CD's namespace; Argo CD's own lookup (the longest URL prefix) finds it
    for an Application's repoURL under it, and the repo-server's login and pull succeed with
    exactly what it resolved. At renewal the Secret is rewritten: Argo CD resolves the new
    token, which pulls, and the old one is refused. Deleting the object removes the Secret.

    The registry is named localhost:<port>: Argo CD's prefix match (getRepositoryCredentialIndex)
    compares URLs normalized by git.NormalizeGitURL, which yields "" for 127.0.0.1:<port>/...
    (Go's url.Parse refuses a first path segment with a colon), so a repo-creds Secret never
    matches a registry addressed by IP and port (docs/install.md says so)."""
    basic = registries.basic
    host = f"localhost:{basic.port}"  # the registry's certificate names localhost too
    prefix = f"argo{secrets.token_hex(3)}"
    push_podinfo(clients, registries, tmp_path, f"{prefix}/charts")
    argocd = namespace  # the namespace Argo CD runs in
    name = f"charts-{secrets.token_hex(3)}"
    hook = minting_webhook(registries, "argo-hook-key", 40)
    try:
        apply(
            cluster,
            ca_config_map(argocd, registries.ca_file),
            secret_object("hook-headers", argocd, **{"X-Api-Key": "argo-hook-key"}),
        )
        run_operator("--credentials-namespace", argocd)
        spec = {
            "server": host,
            "repositoryPrefix": prefix,
            "auth": webhook_auth(hook),
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "refresh": {"renewBefore": "50%"},
            "targets": {"argoCD": {"namespace": argocd}},
        }
        apply(cluster, registry_object(CLUSTER, name, spec))
        wait_for_reason(cluster, CLUSTER, name, "Ready", timeout=60)
        first = secret(cluster, argocd, f"{name}-argocd")
        assert first is not None
        labels = first["metadata"]["labels"]
        assert labels["argocd.argoproj.io/secret-type"] == "repo-creds"
        assert labels["app.kubernetes.io/managed-by"] == "ocireg"
        written = decoded(first)
        assert {k: v for k, v in written.items() if k != "password"} == {
            "type": "helm",
            "enableOCI": "true",
            "url": f"{host}/{prefix}",
            "username": "webhook-user",
        }

        app_url = f"{host}/{prefix}/charts"  # an Application's source.repoURL
        repo = argocd_resolves(argocd_repo, cluster, argocd, app_url)
        assert repo["url"] == app_url
        assert (repo["type"], repo["enableOCI"], repo["inheritedCreds"]) == ("helm", True, True)
        assert (repo["username"], repo["password"]) == ("webhook-user", written["password"])
        pulled = helm_login_and_pull(clients, tmp_path, repo, "podinfo", "1.1.0")
        assert pulled.returncode == 0, pulled.stderr
        # Without the Secret's credentials the registry refuses the same pull.
        anonymous = {**repo, "username": "", "password": ""}
        assert helm_login_and_pull(clients, tmp_path, anonymous, "podinfo", "1.1.0").returncode

        # Renewed at half of the 40 s life: rewritten in place, resolved anew, pulled with.
        rotated = wait_for(
            lambda: (
                (s := secret(cluster, argocd, f"{name}-argocd"))
                and decoded(s)["password"] != written["password"]
                and s
            ),
            60,
            "the Argo CD Secret to be renewed",
        )
        assert rotated["metadata"]["uid"] == first["metadata"]["uid"]
        renewed = argocd_resolves(argocd_repo, cluster, argocd, app_url)
        assert renewed["password"] == decoded(rotated)["password"]
        pulled = helm_login_and_pull(clients, tmp_path, renewed, "podinfo", "1.0.0")
        assert pulled.returncode == 0, pulled.stderr
        stale = helm_login_and_pull(clients, tmp_path, repo, "podinfo", "1.0.0")
        assert stale.returncode != 0

        delete_registry(cluster, name)
        wait_for(
            lambda: secret(cluster, argocd, f"{name}-argocd") is None,
            60,
            "the Argo CD Secret to be removed with its registry object",
        )
        gone = argocd_resolves(argocd_repo, cluster, argocd, app_url)
        assert not gone["hasCredentials"]
    finally:
        delete_registry(cluster, name)
        hook.stop()


def test_argo_cd_repository_secret_follows_a_password_change_and_goes_when_dropped(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    tmp_path: Path,
    argocd_repo: str,
) -> None:
    """secretType repository with a path: a Secret for exactly one repository URL, which
    Argo CD matches itself (not inherited). A new password in the login Secret reaches Argo
    CD within seconds; dropping targets.argoCD removes the Secret and leaves the pull
    secrets."""
    basic = registries.basic
    prefix = f"repo{secrets.token_hex(3)}"
    push_podinfo(clients, registries, tmp_path, f"{prefix}/charts")
    argocd, apps = namespace, f"{namespace[:50]}-apps"
    cluster.kubectl("create", "namespace", apps)
    name = f"repo-{secrets.token_hex(3)}"
    try:
        apply(
            cluster,
            ca_config_map(argocd, registries.ca_file),
            secret_object("login", argocd, username=basic.username, password=basic.password),
        )
        run_operator("--credentials-namespace", argocd)
        spec: dict[str, Any] = {
            "server": basic.host,
            "auth": {"basic": {"secretRef": {"name": "login"}}},
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {
                "namespaces": [apps],
                "argoCD": {
                    "namespace": argocd,
                    "secretType": "repository",
                    "path": f"{prefix}/charts",
                },
            },
        }
        apply(cluster, registry_object(CLUSTER, name, spec))
        wait_for_reason(cluster, CLUSTER, name, "Ready", timeout=60)
        app_url = f"{basic.host}/{prefix}/charts"
        repo = argocd_resolves(argocd_repo, cluster, argocd, app_url)
        assert (repo["url"], repo["inheritedCreds"]) == (app_url, False)
        assert (repo["username"], repo["password"]) == (basic.username, basic.password)
        pulled = helm_login_and_pull(clients, tmp_path, repo, "podinfo", "1.0.0")
        assert pulled.returncode == 0, pulled.stderr
        # Only that repository: another path under the host gets nothing from it.
        assert not argocd_resolves(argocd_repo, cluster, argocd, f"{basic.host}/x")[
            "hasCredentials"
        ]

        new = f"pw-{secrets.token_hex(8)}"
        registries.set_password("basic", new)
        apply(cluster, secret_object("login", argocd, username=basic.username, password=new))
        wait_for(
            lambda: argocd_resolves(argocd_repo, cluster, argocd, app_url)["password"] == new,
            30,
            "Argo CD to resolve the new password",
        )
        renewed = argocd_resolves(argocd_repo, cluster, argocd, app_url)
        pulled = helm_login_and_pull(clients, tmp_path, renewed, "podinfo", "1.1.0")
        assert pulled.returncode == 0, pulled.stderr

        del spec["targets"]["argoCD"]
        apply(cluster, registry_object(CLUSTER, name, spec))
        wait_for(
            lambda: secret(cluster, argocd, f"{name}-argocd") is None,
            30,
            "the Argo CD Secret to be removed",
        )
        assert secret(cluster, apps, name) is not None  # the pull secret stays
    finally:
        delete_registry(cluster, name)
        cluster.kubectl("delete", "namespace", apps, "--wait=false", check=False)


# -- Flux ------------------------------------------------------------------------------------


def flux_auth(
    gitops_bin: Path, clients: Clients, workdir: Path, mode: str, target: str, body: dict
) -> subprocess.CompletedProcess[str]:
    """flux-auth on a Secret as the API returns it (the local CA trusted, as a CA in the
    system roots or certSecretRef would be)."""
    path = workdir / f"secret-{secrets.token_hex(4)}.json"
    path.write_text(json.dumps(body))
    return subprocess.run(
        [str(gitops_bin / "flux-auth"), mode, target, str(path)],
        env={**os.environ, "SSL_CERT_FILE": str(clients.ca_file)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_flux_sources_pull_with_the_pull_secret_ocireg_writes(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    gitops_bin: Path,
    run_operator,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The Secret an OCIRepository's or a HelmRepository's (type oci) secretRef names: the
    pull Secret ocireg writes into the sources' namespace, read as source-controller reads
    it (see the module text), gets the chart from the registry; the same Secret for another
    host gets nothing."""
    basic = registries.basic
    prefix = f"flux{secrets.token_hex(3)}"
    push_podinfo(clients, registries, tmp_path, f"{prefix}/charts")
    name = f"flux-{secrets.token_hex(3)}"
    flux = f"{namespace[:50]}-flux"  # the namespace of the Flux sources
    cluster.kubectl("create", "namespace", flux)
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object("login", namespace, username=basic.username, password=basic.password),
        )
        run_operator("--credentials-namespace", namespace)
        spec = {
            "server": basic.host,
            "auth": {"basic": {"secretRef": {"name": "login"}}},
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {"namespaces": [flux], "serviceAccounts": []},
        }
        apply(cluster, registry_object(CLUSTER, name, spec))
        wait_for_reason(cluster, CLUSTER, name, "Ready", timeout=60)
        body = cluster.get_json("secret", name, "-n", flux)
        assert body["type"] == "kubernetes.io/dockerconfigjson"

        # OCIRepository: url oci://<host>/<prefix>/charts/podinfo, ref.tag 1.1.0.
        ref = f"{basic.host}/{prefix}/charts/podinfo:1.1.0"
        fetched = flux_auth(gitops_bin, clients, tmp_path, "oci", ref, body)
        assert fetched.returncode == 0, fetched.stderr
        layer = json.loads(fetched.stdout)
        assert layer["digest"].startswith("sha256:")
        assert layer["size"] > 0

        # HelmRepository type oci: url oci://<host>/<prefix>/charts, chart podinfo.
        url = f"oci://{basic.host}/{prefix}/charts"
        found = flux_auth(gitops_bin, clients, tmp_path, "helm", url, body)
        assert found.returncode == 0, found.stderr
        login = json.loads(found.stdout)
        assert login["username"] == basic.username
        repo = {"url": url.removeprefix("oci://"), **login}
        pulled = helm_login_and_pull(clients, tmp_path, repo, "podinfo", "1.0.0")
        assert pulled.returncode == 0, pulled.stderr

        # Not for this host: nothing to log in with, and the registry refuses anonymous pulls.
        other = json.loads(base64.b64decode(body["data"][".dockerconfigjson"]))
        other["auths"] = {"registry.example.com": next(iter(other["auths"].values()))}
        elsewhere = {**body, "data": {".dockerconfigjson": base64.b64encode(
            json.dumps(other).encode()).decode()}}  # fmt: skip
        assert flux_auth(gitops_bin, clients, tmp_path, "oci", ref, elsewhere).returncode
        refused = flux_auth(gitops_bin, clients, tmp_path, "helm", url, elsewhere)
        assert "no auth config" in refused.stderr, refused.stderr
    finally:
        delete_registry(cluster, name)
        cluster.kubectl("delete", "namespace", flux, "--wait=false", check=False)
