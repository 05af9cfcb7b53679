"""What e2e tests look at, the way a user would with kubectl."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries
from ocireg_devenv.standins import WebhookStandIn

T = TypeVar("T")
API_VERSION = "ocireg.dev/v1alpha1"
# `helm template` checks the chart's kubeVersion (>=1.30) against `--kube-version`, not against
# a cluster, and Helm 3 assumes v1.20 without it (as Argo CD does, the tests pass the version
# of the cluster they install on: the local control plane's, tests/cluster/build.sh).
HELM_KUBE_VERSION = ("--kube-version", "v1.36.3")


def wait_for(check: Callable[[], T], timeout: float, what: str) -> T:
    """Poll until ``check`` returns something truthy; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def apply(cluster: ControlPlane, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


def secret_object(name: str, namespace: str, **string_data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": string_data,
    }


def ca_config_map(
    namespace: str, ca_file: Path, name: str = "registry-ca", key: str = "ca.crt"
) -> dict[str, Any]:
    """A ConfigMap holding a CA bundle, for tls.caBundleRef."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {key: ca_file.read_text()},
    }


def registry_object(
    kind: str, name: str, spec: dict[str, Any], namespace: str | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def secret(cluster: ControlPlane, namespace: str, name: str) -> dict | None:
    result = cluster.kubectl("get", "secret", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def secret_text(cluster: ControlPlane, namespace: str, name: str, key: str) -> str | None:
    found = secret(cluster, namespace, name)
    if found is None or key not in (found.get("data") or {}):
        return None
    return base64.b64decode(found["data"][key]).decode()


def registry(cluster: ControlPlane, kind: str, name: str, namespace: str | None = None) -> dict:
    args = [kind.lower(), name] + (["-n", namespace] if namespace else [])
    return cluster.get_json(*args)


def condition(
    cluster: ControlPlane, kind: str, name: str, type_: str, namespace: str | None = None
) -> dict:
    body = registry(cluster, kind, name, namespace)
    for found in (body.get("status") or {}).get("conditions") or []:
        if found["type"] == type_:
            return found
    return {}


def wait_for_reason(
    cluster: ControlPlane,
    kind: str,
    name: str,
    reason: str,
    namespace: str | None = None,
    type_: str = "Ready",
    timeout: float = 45,
) -> dict:
    return wait_for(
        lambda: (
            (found := condition(cluster, kind, name, type_, namespace)).get("reason") == reason
            and found
        ),
        timeout,
        f"{kind} {name}: {type_} reason {reason}",
    )


def pull_secret_refs(cluster: ControlPlane, namespace: str, account: str = "default") -> list[str]:
    sa = cluster.get_json("serviceaccount", account, "-n", namespace)
    return [r["name"] for r in sa.get("imagePullSecrets") or []]


def events_for(cluster: ControlPlane, name: str) -> list[dict]:
    result = cluster.kubectl(
        "get", "events", "-A", "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    return json.loads(result.stdout)["items"]


# Tenant (OCIRegistry) objects in these tests use the local registries on 127.0.0.1, which the
# egress policy refuses by default. Only that one address is allowed: the rest of 127.0.0.0/8
# stays refused, where the hostile tests put the "internal service" (127.0.0.2).
ALLOW_LOCAL_REGISTRIES = ("--egress-allowed-cidr", "127.0.0.1/32")


def api_requests(
    cluster: ControlPlane, verb: str, resources: tuple[str, ...], scope: str | None = None
) -> int:
    """Requests the API server has answered so far with this verb for these resources (and
    scope: "resource" for single objects), from its own metrics (apiserver_request_total)."""
    metrics = cluster.kubectl("get", "--raw", "/metrics").stdout
    total = 0
    for line in metrics.splitlines():
        if not line.startswith("apiserver_request_total{") or f'verb="{verb}"' not in line:
            continue
        if scope is not None and f'scope="{scope}"' not in line:
            continue
        if any(f'resource="{resource}"' in line for resource in resources):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def minting_webhook(registries: LocalRegistries, api_key: str, lifetime: int) -> WebhookStandIn:
    """A started webhook that mints a new login at the basic registry on each call and answers
    it as JSON (auth.user, auth.token, auth.expires_in = ``lifetime``), for callers that send
    the header X-Api-Key: ``api_key``. The caller stops it."""
    hook = WebhookStandIn(
        lambda user, password: registries.set_user("basic", user, password),
        header=("X-Api-Key", api_key),
        lifetime=lifetime,
    ).start()
    hook.json_answers = True
    return hook


def webhook_auth(
    hook: WebhookStandIn,
    headers_secret: str = "hook-headers",  # noqa: S107 - a Secret's name
    **extra: Any,
) -> dict[str, Any]:
    """spec.auth for ``minting_webhook``'s answers, its header read from ``headers_secret``
    (``extra``: more fields of spec.auth.webhook)."""
    return {
        "webhook": {
            "url": f"{hook.url}/credentials",
            "insecure": True,
            "headersSecretRef": {"name": headers_secret},
            "format": "JSON",
            "usernameField": "auth.user",
            "passwordField": "auth.token",
            "expiresInField": "auth.expires_in",
            **extra,
        }
    }
