"""The only module that talks to the Kubernetes API: idempotent writers and readers."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from . import metrics
from .errors import ReconcileError
from .plan import DesiredSecret, RegistryRef, SecretState, secret_decision, secret_state

GROUP, VERSION = "ocireg.dev", "v1alpha1"


class Unknown:
    """Marks a Secret not looked at yet (None means looked at and absent)."""


UNKNOWN = Unknown()
PLURALS = {"OCIRegistry": "ociregistries", "ClusterOCIRegistry": "clusterociregistries"}


def load_config() -> None:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


# Written objects are handed to this (the body the API answered with), so the index knows
# them before their watch event arrives.
Written = Callable[[dict[str, Any]], None]


class WatchSource:
    """A list function of the API, called for pages of raw JSON and for watch streams
    (no client model objects: the index keeps a few fields of each object)."""

    PAGE = 500

    def __init__(self, lister: Callable[..., Any], **selector: str) -> None:
        self.lister = lister
        self.selector = selector

    def page(self, token: str | None) -> dict[str, Any]:
        response = self.lister(
            **self.selector,
            limit=self.PAGE,
            _continue=token,
            _preload_content=False,
            _request_timeout=60,
        )
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def watch(self, resource_version: str, timeout: int) -> Iterator[dict[str, Any]]:
        response = self.lister(
            **self.selector,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=(10, timeout + 30),
        )
        try:
            for line in iter_resp_lines(response):
                if line.strip():
                    yield json.loads(line)
        finally:
            response.close()
            response.release_conn()


def _state(observed: dict[str, Any] | SecretState | None) -> SecretState | None:
    if observed is None or isinstance(observed, SecretState):
        return observed
    return secret_state(observed)


def _json(response: Any) -> dict[str, Any]:
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        self.api = api_client or kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)

    def _dict(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                raise ReconcileError(
                    "SecretNotFound", f"Secret {namespace}/{name} does not exist"
                ) from None
            if error.status == 403:
                raise ReconcileError(
                    "Forbidden", f"the operator may not read Secret {namespace}/{name}"
                ) from None
            raise ReconcileError(
                "APIError",
                f"reading Secret {namespace}/{name}: HTTP {error.status}",
                transient=True,
            ) from None
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def request_token(self, namespace: str, service_account: str, audience: str) -> str:
        """A short-lived token for a ServiceAccount (TokenRequest), for cloud web identity."""
        body = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600)
        )
        try:
            answer = self.core.create_namespaced_service_account_token(
                service_account, namespace, body
            )
        except ApiException as error:
            if error.status == 404:
                raise ReconcileError(
                    "ServiceAccountNotFound",
                    f"ServiceAccount {namespace}/{service_account} does not exist",
                ) from None
            if error.status == 403:
                raise ReconcileError(
                    "Forbidden",
                    f"the operator may not request tokens for {namespace}/{service_account}",
                ) from None
            raise
        return answer.status.token

    def read_registry(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        try:
            if namespace:
                return self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURALS[kind], name
                )
            return self.custom.get_cluster_custom_object(GROUP, VERSION, PLURALS[kind], name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def namespaces(self) -> list[tuple[str, dict[str, str], str]]:
        items = self.core.list_namespace().items
        return [
            (ns.metadata.name, ns.metadata.labels or {}, ns.status.phase or "Active")
            for ns in items
        ]

    def apply_secret(
        self,
        desired: DesiredSecret,
        observed: dict[str, Any] | SecretState | Unknown | None = UNKNOWN,
        written: Written | None = None,
    ) -> str:
        """Write the Secret if needed: created | updated | unchanged | conflict | gone.

        ``observed`` is the Secret as last listed or indexed (None: absent); without it, it
        is read. ``written`` gets the body the API answered a write with."""
        for _attempt in range(2):
            if observed is UNKNOWN:
                observed = self._read_secret_body(desired.namespace, desired.name)
            state = _state(observed)  # type: ignore[arg-type]
            decision = secret_decision(desired, state)
            try:
                if decision == "create":
                    answer = self.core.create_namespaced_secret(
                        desired.namespace, desired.body(), _preload_content=False
                    )
                elif decision == "update":
                    assert state is not None
                    body = desired.body()
                    body["metadata"]["resourceVersion"] = state.resource_version
                    answer = self.core.replace_namespaced_secret(
                        desired.name, desired.namespace, body, _preload_content=False
                    )
                else:
                    return decision
            except ApiException as error:
                if error.status == 409:
                    observed = UNKNOWN  # raced with another writer (or a stale list): re-read
                    continue
                # A terminating or vanished namespace is not an error of ours.
                if error.status == 404 or (
                    error.status == 403 and "terminat" in str(error.body).lower()
                ):
                    return "gone"
                raise
            metrics.SECRET_WRITES.inc()
            answered = _json(answer)
            if written is not None:
                written(answered)
            return decision + "d"
        return "conflict"

    def _read_secret_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(self.core.read_namespaced_secret(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def managed_secrets(
        self, ref: RegistryRef, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """The Secrets this registry object wrote, found by their labels."""
        if namespace is None:
            items = self.core.list_secret_for_all_namespaces(label_selector=ref.selector()).items
        else:
            items = self.core.list_namespaced_secret(namespace, label_selector=ref.selector()).items
        return [self._dict(s) for s in items]

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        options = kubernetes.client.V1DeleteOptions(
            preconditions=kubernetes.client.V1Preconditions(uid=uid) if uid else None
        )
        try:
            self.core.delete_namespaced_secret(name, namespace, body=options)
        except ApiException as error:
            if error.status not in (404, 409):  # gone already, or not the one we listed
                raise

    def watch_source(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> WatchSource:
        """What the index watches: namespaces, ServiceAccounts, and Secrets (ours, by label,
        or all of one namespace)."""
        selector = {"label_selector": label_selector} if label_selector else {}
        if kind == "namespaces":
            return WatchSource(self.core.list_namespace, **selector)
        if kind == "serviceaccounts":
            return WatchSource(self.core.list_service_account_for_all_namespaces, **selector)
        if kind == "secrets" and namespace:
            return WatchSource(self.core.list_namespaced_secret, namespace=namespace, **selector)
        if kind == "secrets":
            return WatchSource(self.core.list_secret_for_all_namespaces, **selector)
        raise ValueError(f"no watch source for {kind}")

    def patch_registry_status(self, ref: RegistryRef, status: dict[str, Any]) -> None:
        """Merge ``status`` into the object's status (for work done outside a kopf handler,
        which would otherwise write it). A deleted object is not an error."""
        plural, body = PLURALS[ref.kind], {"status": status}
        merge = "application/merge-patch+json"
        try:
            if ref.namespace:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, ref.namespace, plural, ref.name, body, _content_type=merge
                )
            else:
                self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, plural, ref.name, body, _content_type=merge
                )
        except ApiException as error:
            if error.status != 404:
                raise

    def service_accounts(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """ServiceAccounts of one namespace, or of all namespaces with None."""
        try:
            if namespace is None:
                items = self.core.list_service_account_for_all_namespaces().items
            else:
                items = self.core.list_namespaced_service_account(namespace).items
        except ApiException as error:
            if error.status == 404:
                return []
            raise
        return [self._dict(sa) for sa in items]

    def read_config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        try:
            config_map = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {k: v.encode() for k, v in (config_map.data or {}).items()}

    def read_config_map_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(self.core.read_namespaced_config_map(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def apply_config_map(
        self,
        desired: dict[str, Any],
        decide: Callable[[dict[str, Any], dict[str, Any] | None], str],
    ) -> str:
        """Write the ConfigMap if ``decide(desired, observed)`` says so: created | updated |
        unchanged | conflict | gone (its namespace is missing or terminating)."""
        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        for _attempt in range(3):
            observed = self.read_config_map_body(namespace, name)
            decision = decide(desired, observed)
            try:
                if decision == "create":
                    self.core.create_namespaced_config_map(namespace, desired)
                    return "created"
                if decision == "update":
                    assert observed is not None
                    body = {**desired, "metadata": dict(desired["metadata"])}
                    body["metadata"]["resourceVersion"] = observed["metadata"]["resourceVersion"]
                    self.core.replace_namespaced_config_map(name, namespace, body)
                    return "updated"
            except ApiException as error:
                if error.status == 409:
                    continue  # raced with another writer: look again
                if error.status == 404 or (
                    error.status == 403 and "terminat" in str(error.body).lower()
                ):
                    return "gone"
                raise ReconcileError(
                    "APIError",
                    f"writing ConfigMap {namespace}/{name}: HTTP {error.status}",
                    transient=True,
                ) from None
            return decision
        return "conflict"

    def delete_config_map(self, namespace: str, name: str, uid: str | None = None) -> None:
        options = kubernetes.client.V1DeleteOptions(
            preconditions=kubernetes.client.V1Preconditions(uid=uid) if uid else None
        )
        try:
            self.core.delete_namespaced_config_map(name, namespace, body=options)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def update_service_account(
        self,
        namespace: str,
        service_account: dict[str, Any],
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        written: Written | None = None,
    ) -> bool:
        """Apply ``change`` (ServiceAccount -> JSON merge patch or None) to the listed
        ServiceAccount; on a conflict re-read it and compute the patch again. True if
        patched; ``written`` gets the patched ServiceAccount."""
        name = service_account["metadata"]["name"]
        current: dict[str, Any] | None = service_account
        for _attempt in range(5):
            if current is None:
                try:
                    current = self._dict(self.core.read_namespaced_service_account(name, namespace))
                except ApiException as error:
                    if error.status == 404:
                        return False
                    raise
            patch = change(current)
            if patch is None:
                return False
            try:
                answer = self.core.patch_namespaced_service_account(
                    name,
                    namespace,
                    patch,
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                )
                answered = _json(answer)
                if written is not None:
                    written(answered)
                return True
            except ApiException as error:
                if error.status == 404:
                    return False
                if error.status != 409:
                    raise
                current = None  # changed since we looked: look again
        raise ReconcileError(
            "Conflict",
            f"ServiceAccount {namespace}/{name} kept changing while being updated",
            transient=True,
        )
