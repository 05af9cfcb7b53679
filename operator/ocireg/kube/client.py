"""The Kubernetes API calls of the operator, JSON in and out: idempotent writers and readers."""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from ocireg import metrics
from ocireg.api.errors import ReconcileError
from ocireg.api.names import CLUSTER_KIND, GROUP, PLURALS, VERSION
from ocireg.api.ownership import RegistryRef
from ocireg.api.reasons import Reason

log = logging.getLogger(__name__)
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


class Conflict(Exception):
    """The object changed since it was read (HTTP 409): read it again and decide again."""


def load_config(kubeconfig: str | None = None, context: str | None = None) -> None:
    """The in-cluster identity, else the kubeconfig (KUBECONFIG, ~/.kube/config); a file or
    context named here is always the kubeconfig's."""
    if kubeconfig is None and context is None:
        try:
            kubernetes.config.load_incluster_config()
            return
        except kubernetes.config.ConfigException:
            pass
    kubernetes.config.load_kube_config(config_file=kubeconfig, context=context)


def context_namespace(kubeconfig: str | None = None, context: str | None = None) -> str | None:
    """The namespace the kubeconfig's (current or named) context sets, as kubectl uses it;
    None when it sets none or there is no kubeconfig."""
    try:
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception:  # no kubeconfig (in a pod), or an unreadable one: connect says why
        return None
    if context is not None:
        active = next((c for c in contexts if c.get("name") == context), active)
    namespace = ((active or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


class ClusterUnreachable(Exception):
    """No API server answers to the configured identity; the message is one line for a
    person (never a token: only the server's address and what went wrong)."""


def _why(error: BaseException) -> str:
    """The last, most specific part of a connection error's text ("Connection refused",
    "certificate verify failed ...") rather than urllib3's nested object reprs."""
    reason = getattr(error, "reason", None)
    text = str(reason if isinstance(reason, BaseException) else error)
    return text.rsplit(": ", 1)[-1].strip(" )'\"") or type(error).__name__


def connect(
    timeout: float, kubeconfig: str | None = None, context: str | None = None
) -> dict[str, Any]:
    """Load the identity (load_config) and ask the API server for its version: the answer,
    or ClusterUnreachable saying why in one line (no kubeconfig, a broken one, nothing
    listening, TLS, a refused identity)."""
    try:
        load_config(kubeconfig, context)
    except Exception as error:  # the loader raises ConfigException, OSError, KeyError ...
        raise ClusterUnreachable(
            f"no usable kubeconfig or in-cluster identity ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'})"
        ) from None
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.retries = 0  # one attempt: the caller decides what a failure means
    client = kubernetes.client.ApiClient(configuration)
    host = configuration.host
    try:
        return JsonApi(client)._object("GET", "/version", timeout=timeout)
    except ApiException as error:
        raise ClusterUnreachable(
            f"the API server at {host} refused the request: {error.status} {error.reason}"
        ) from None
    except Exception as error:  # urllib3's connection, TLS and timeout errors
        raise ClusterUnreachable(f"cannot reach the API server at {host}: {_why(error)}") from None
    finally:
        client.close()


# Written objects are handed to this (the body the API answered with), so the index knows
# them before their watch event arrives.
Written = Callable[[dict[str, Any]], None]
Query = str | int | bool | None
MERGE_PATCH = "application/merge-patch+json"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
PARTIAL_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
WEBHOOK_CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
# The client's error type, named here so that no other room imports kubernetes.
ApiError = ApiException
# Most bytes read of one answer of the API (a list page, one object). Tenants control what
# is listed (any Secret may carry the managed-by label, a ServiceAccount any annotations);
# one object is at most ~1.5 MiB (etcd's request limit), so a page that is more than this is
# asked for again in smaller pages, never read whole (decoded JSON costs ~3x its bytes).
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_CHUNK = 64 * 1024


class AnswerTooLarge(ReconcileError):
    """An answer of the API past MAX_ANSWER_BYTES (closed unread)."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(
            Reason.API_ANSWER_TOO_LARGE,
            f"the API's answer to GET {path} was more than {limit / (1024 * 1024):g} MiB; not read",
            transient=True,
        )


def _read_bounded(response: Any, path: str, limit: int) -> bytearray:
    """The body of a urllib3 response, at most ``limit`` bytes (closed past it)."""
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        response.close()
        raise AnswerTooLarge(path, limit)
    data = bytearray()
    try:
        while chunk := response.read(_CHUNK):
            data += chunk
            if len(data) > limit:
                raise AnswerTooLarge(path, limit)
    except AnswerTooLarge:
        response.close()  # the rest is never read: the connection is not reused
        raise
    response.release_conn()
    return data


class JsonApi:
    """API calls with JSON in and out, through the client's ApiClient (its configuration,
    authentication, TLS and connection pool). The client's own generated API classes build a
    validator for each of their hundreds of methods when first used (CoreV1Api alone costs
    about 19 MB of the operator's memory), and their model objects cost more per object than
    the dicts the callers want anyway. Method names and arguments follow the generated
    classes'."""

    def __init__(
        self, api: kubernetes.client.ApiClient, max_answer_bytes: int = MAX_ANSWER_BYTES
    ) -> None:
        self.api = api
        self.max_answer_bytes = max_answer_bytes

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: Any = None,
        stream: bool = False,
        accept: str = "application/json",
        **query: Query,
    ) -> Any:
        """The decoded JSON answer (an object: typed so by the verbs that call this), or
        with ``stream`` the open response. Non-2xx answers raise ApiException, as the
        client's methods do."""
        names = {"_continue": "continue"}
        params = [(names.get(k) or _camel(k), v) for k, v in query.items() if v is not None]
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            text = response.read().decode(errors="replace")
            raise ApiException.from_response(http_resp=response, body=text, data=None)
        if stream:
            return response.response
        return json.loads(_read_bounded(response.response, path, self.max_answer_bytes))

    def _object(self, method: str, path: str, body: Any = None, **options: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self._call(method, path, body, **options)
        return answer


class CoreV1(JsonApi):
    """The core/v1 calls ocireg makes (and one SelfSubjectAccessReview)."""

    # authorization.k8s.io/v1: allowed to every authenticated identity (system:basic-user)
    def create_self_subject_access_review(self, body: Any) -> dict[str, Any]:
        return self._object("POST", ACCESS_REVIEWS, body)

    # Secrets
    def read_namespaced_secret(self, name: str, namespace: str) -> dict[str, Any]:
        return self._object("GET", _path(namespace, "secrets", name))

    def create_namespaced_secret(self, namespace: str, body: Any) -> dict[str, Any]:
        return self._object("POST", _path(namespace, "secrets"), body)

    def replace_namespaced_secret(self, name: str, namespace: str, body: Any) -> dict[str, Any]:
        return self._object("PUT", _path(namespace, "secrets", name), body)

    def delete_namespaced_secret(self, name: str, namespace: str, body: Any = None) -> None:
        self._call("DELETE", _path(namespace, "secrets", name), body)

    def read_namespaced_secret_metadata(
        self, name: str, namespace: str, timeout: float
    ) -> dict[str, Any]:
        """Its metadata only: the data never crosses the wire."""
        path = _path(namespace, "secrets", name)
        return self._object("GET", path, timeout=timeout, accept=PARTIAL_METADATA)

    def list_namespaced_secret(self, namespace: str, **query: Any) -> Any:
        return self._call("GET", _path(namespace, "secrets"), **query)

    def list_secret_for_all_namespaces(self, **query: Any) -> Any:
        return self._call("GET", "/api/v1/secrets", **query)

    # ServiceAccounts
    def read_namespaced_service_account(self, name: str, namespace: str) -> dict[str, Any]:
        return self._object("GET", _path(namespace, "serviceaccounts", name))

    def patch_namespaced_service_account(
        self, name: str, namespace: str, body: Any
    ) -> dict[str, Any]:
        path = _path(namespace, "serviceaccounts", name)
        return self._object("PATCH", path, body, content_type=MERGE_PATCH)

    def create_namespaced_service_account_token(
        self, name: str, namespace: str, body: Any
    ) -> dict[str, Any]:
        return self._object("POST", _path(namespace, "serviceaccounts", name) + "/token", body)

    def list_namespaced_service_account(self, namespace: str, **query: Any) -> Any:
        return self._call("GET", _path(namespace, "serviceaccounts"), **query)

    def list_service_account_for_all_namespaces(self, **query: Any) -> Any:
        return self._call("GET", "/api/v1/serviceaccounts", **query)

    # Namespaces
    def list_namespace(self, **query: Any) -> Any:
        return self._call("GET", "/api/v1/namespaces", **query)

    # ConfigMaps
    def list_config_map_for_all_namespaces(self, **query: Any) -> Any:
        return self._call("GET", "/api/v1/configmaps", **query)

    def read_namespaced_config_map(self, name: str, namespace: str) -> dict[str, Any]:
        return self._object("GET", _path(namespace, "configmaps", name))

    def create_namespaced_config_map(self, namespace: str, body: Any) -> dict[str, Any]:
        return self._object("POST", _path(namespace, "configmaps"), body)

    def replace_namespaced_config_map(self, name: str, namespace: str, body: Any) -> dict[str, Any]:
        return self._object("PUT", _path(namespace, "configmaps", name), body)

    def delete_namespaced_config_map(self, name: str, namespace: str, body: Any = None) -> None:
        self._call("DELETE", _path(namespace, "configmaps", name), body)

    # Events (kube.events)
    def create_namespaced_event(self, namespace: str, body: Any, timeout: float) -> dict[str, Any]:
        return self._object("POST", _path(namespace, "events"), body, timeout=timeout)

    def patch_namespaced_event(
        self, name: str, namespace: str, body: Any, timeout: float
    ) -> dict[str, Any]:
        path = _path(namespace, "events", name)
        return self._object("PATCH", path, body, content_type=MERGE_PATCH, timeout=timeout)


class CustomObjectsV1(JsonApi):
    """Our own objects (OCIRegistry, ClusterOCIRegistry): read one, merge-patch its status."""

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}"
        return self._object("GET", path)

    def get_cluster_custom_object(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any]:
        return self._object("GET", f"/apis/{group}/{version}/{plural}/{name}")

    def list_custom_object(self, group: str, version: str, plural: str, **query: Any) -> Any:
        """Every namespace's objects of a namespaced kind, or a cluster-scoped kind's."""
        return self._object("GET", f"/apis/{group}/{version}/{plural}", **query)

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, **query: Any
    ) -> Any:
        path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"
        return self._object("GET", path, **query)

    def patch_namespaced_custom_object_status(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> dict[str, Any]:
        path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status"
        return self._object("PATCH", path, body, content_type=MERGE_PATCH)

    def patch_cluster_custom_object_status(
        self, group: str, version: str, plural: str, name: str, body: Any
    ) -> dict[str, Any]:
        path = f"/apis/{group}/{version}/{plural}/{name}/status"
        return self._object("PATCH", path, body, content_type=MERGE_PATCH)


class CoordinationV1(JsonApi):
    """The leader election's Lease (kube.leader)."""

    def read_namespaced_lease(self, name: str, namespace: str, timeout: float) -> dict[str, Any]:
        return self._object("GET", _leases(namespace, name), timeout=timeout)

    def create_namespaced_lease(
        self, namespace: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        return self._object("POST", _leases(namespace), body, timeout=timeout)

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        return self._object("PUT", _leases(namespace, name), body, timeout=timeout)


def _leases(namespace: str, name: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{path}/{name}" if name else path


class AdmissionRegistrationV1(JsonApi):
    """The admissionregistration.k8s.io/v1 calls (the webhook's own configuration), the same
    way: JSON through the ApiClient, no generated API class."""

    def read_mutating_webhook_configuration(self, name: str, timeout: float) -> dict[str, Any]:
        return self._object("GET", f"{WEBHOOK_CONFIGURATIONS}/{name}", timeout=timeout)

    def create_mutating_webhook_configuration(
        self, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        return self._object("POST", WEBHOOK_CONFIGURATIONS, body, timeout=timeout)

    def patch_mutating_webhook_configuration(
        self, name: str, patch: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        path = f"{WEBHOOK_CONFIGURATIONS}/{name}"
        return self._object("PATCH", path, patch, content_type=MERGE_PATCH, timeout=timeout)


def _path(namespace: str, resource: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/{resource}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


def _delete_options(uid: str | None) -> dict[str, Any]:
    """DeleteOptions with a uid precondition: only the object we saw, never one re-created
    under the same name since."""
    return {"preconditions": {"uid": uid}} if uid else {}


class WatchSource:
    """A list call of the API, made for pages of raw JSON and for watch streams (the index
    keeps a few fields of each object, never the object)."""

    PAGE = 500

    def __init__(
        self,
        lister: Callable[..., Any],
        page: int = PAGE,
        metadata_only: bool = False,
        **selector: str,
    ) -> None:
        self.lister = lister
        self.selector = selector
        self.limit = page
        # Metadata only (PartialObjectMetadata, as client-go's metadata informers ask):
        # a Secret's data never crosses the wire for what only needs to know it changed.
        self.list_accept = {"accept": PARTIAL_METADATA_LIST} if metadata_only else {}
        self.watch_accept = {"accept": PARTIAL_METADATA} if metadata_only else {}

    def page(self, token: str | None) -> dict[str, Any]:
        """One page, the next after ``token``. A page past MAX_ANSWER_BYTES is asked for again
        with half as many objects, down to one (kept for the next pages and lists)."""
        while True:
            try:
                answer: dict[str, Any] = self.lister(
                    **self.selector,
                    **self.list_accept,
                    limit=self.limit,
                    _continue=token,
                    timeout=60,
                )
                return answer
            except AnswerTooLarge:
                if self.limit == 1:
                    raise
                self.limit = max(1, self.limit // 2)
                log.warning(
                    "a page of objects listed by %s was too large; asking for %d at a time",
                    getattr(self.lister, "__name__", "the API"),
                    self.limit,
                )

    def watch(self, resource_version: str, timeout: int) -> Iterator[dict[str, Any]]:
        response = self.lister(
            **self.selector,
            **self.watch_accept,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            timeout=(10, timeout + 30),
            stream=True,
        )
        try:
            for line in iter_resp_lines(response):
                if line.strip():
                    yield json.loads(line)
        finally:
            response.close()
            response.release_conn()


# Objects per list page: the most, not the bound. Secrets and ServiceAccounts are what a
# tenant can fatten (1 MiB of data, annotations) and label for our watches; a page past
# MAX_ANSWER_BYTES is cut there and asked for again with half as many (kept for the next
# pages), so memory is bounded by the cap, and ordinary objects (a pull secret is ~1.5 KiB)
# come in large pages: a restart lists 100,000 copies in 250 requests, not 4,000.
PAGES = {"secrets": 400, "serviceaccounts": 400, "namespaces": 500}
REGISTRY_PAGE = 250  # registry objects carry their status: tens of KB at most each
# Metadata-only pages (no data; annotations still count, and the halving still applies).
METADATA_PAGE = 250


def list_all(lister: Callable[..., Any], page: int, **query: Any) -> list[dict[str, Any]]:
    """Every item of a list call, in pages (the index's WatchSource, bounded per answer)."""
    source, token = WatchSource(lister, page, **query), None
    items: list[dict[str, Any]] = []
    while True:
        answer = source.page(token)
        items += answer.get("items") or []
        token = (answer.get("metadata") or {}).get("continue")
        if not token:
            return items


def _unless_absent(read: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any] | None:
    """What ``read`` answers, or None when the object does not exist (HTTP 404)."""
    try:
        return read(*args)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


class Kube:
    def __init__(
        self, api_client: kubernetes.client.ApiClient | None = None, connections: int = 0
    ) -> None:
        """``connections``: how many connections to the API server the client keeps for
        reuse (0: the client's default, 5 per CPU). Threads beyond it that call at once each
        open one and then throw it away, a new TLS handshake every time."""
        if api_client is None:
            configuration = kubernetes.client.Configuration.get_default_copy()
            if connections:
                configuration.connection_pool_maxsize = connections
            api_client = kubernetes.client.ApiClient(configuration)
        self.api = api_client
        self.core = CoreV1(self.api)
        self.registration = AdmissionRegistrationV1(self.api)
        self.custom = CustomObjectsV1(self.api)

    def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                raise ReconcileError(
                    Reason.SECRET_NOT_FOUND, f"Secret {namespace}/{name} does not exist"
                ) from None
            if error.status == 403:
                raise ReconcileError(
                    Reason.FORBIDDEN, f"the operator may not read Secret {namespace}/{name}"
                ) from None
            raise ReconcileError(
                Reason.API_ERROR,
                f"reading Secret {namespace}/{name}: HTTP {error.status}",
                transient=True,
            ) from None
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def request_token(self, namespace: str, service_account: str, audience: str) -> str:
        """A short-lived token for a ServiceAccount (TokenRequest), for cloud web identity."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": 600},
        }
        try:
            answer = self.core.create_namespaced_service_account_token(
                service_account, namespace, body
            )
        except ApiException as error:
            if error.status == 404:
                raise ReconcileError(
                    Reason.SERVICE_ACCOUNT_NOT_FOUND,
                    f"ServiceAccount {namespace}/{service_account} does not exist",
                ) from None
            if error.status == 403:
                raise ReconcileError(
                    Reason.FORBIDDEN,
                    f"the operator may not request tokens for {namespace}/{service_account}",
                ) from None
            raise
        token: str = answer["status"]["token"]
        return token

    def namespace(self, name: str, timeout: float) -> dict[str, Any] | None:
        """One namespace, or None if there is none by that name. A list with a field
        selector: the operator's role may list namespaces, not get them."""
        found = self.core.list_namespace(field_selector=f"metadata.name={name}", timeout=timeout)
        items = found.get("items") or []
        return items[0] if items else None

    def secret_metadata(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        """A Secret's metadata only, or None if absent."""
        return _unless_absent(self.core.read_namespaced_secret_metadata, name, namespace, timeout)

    def webhook_configuration(self, name: str, timeout: float) -> dict[str, Any] | None:
        """A MutatingWebhookConfiguration, or None if absent."""
        return _unless_absent(self.registration.read_mutating_webhook_configuration, name, timeout)

    def create_webhook_configuration(self, body: dict[str, Any], timeout: float) -> None:
        self.registration.create_mutating_webhook_configuration(body, timeout)

    def patch_webhook_configuration(self, name: str, patch: dict[str, Any], timeout: float) -> None:
        self.registration.patch_mutating_webhook_configuration(name, patch, timeout)

    def may(self, verb: str, resource: str, namespace: str | None = None) -> bool:
        """Whether this identity may ``verb`` the core ``resource`` (cluster-wide unless
        ``namespace``): a SelfSubjectAccessReview, which any authenticated identity may make."""
        attributes = {"verb": verb, "resource": resource}
        if namespace is not None:
            attributes["namespace"] = namespace
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        answer = self.core.create_self_subject_access_review(review)
        return bool((answer.get("status") or {}).get("allowed"))

    def read_registry(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        if namespace:
            return _unless_absent(
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURALS[kind],
                name,
            )
        return _unless_absent(
            self.custom.get_cluster_custom_object, GROUP, VERSION, PLURALS[kind], name
        )

    def registries(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every registry object of ``kind`` (OCIRegistry: in ``namespace``, or in all
        namespaces with None), read in pages."""
        plural = PLURALS[kind]
        if namespace and kind != CLUSTER_KIND:
            lister: Callable[..., Any] = functools.partial(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural
            )
        else:
            lister = functools.partial(self.custom.list_custom_object, GROUP, VERSION, plural)
        return list_all(lister, REGISTRY_PAGE)

    def namespaces(self) -> list[dict[str, Any]]:
        return list_all(self.core.list_namespace, PAGES["namespaces"])

    def read_secret_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as the API has it now (None: absent)."""
        return _unless_absent(self.core.read_namespaced_secret, name, namespace)

    def write_secret(
        self, body: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any] | None:
        """Create the Secret ``body`` describes or, given the ``resource_version`` it was
        seen at, replace that version of it: the API's answer. None: its namespace is gone
        or terminating. Raises Conflict when the Secret changed since (HTTP 409)."""
        meta = body["metadata"]
        try:
            if resource_version is None:
                answer = self.core.create_namespaced_secret(meta["namespace"], body)
            else:
                versioned = {**meta, "resourceVersion": resource_version}
                answer = self.core.replace_namespaced_secret(
                    meta["name"], meta["namespace"], {**body, "metadata": versioned}
                )
        except ApiException as error:
            if error.status == 409:
                raise Conflict(f"Secret {meta['namespace']}/{meta['name']} changed") from None
            # A terminating or vanished namespace is not an error of ours.
            if error.status == 404 or (
                error.status == 403 and "terminat" in str(error.body).lower()
            ):
                return None
            raise
        metrics.SECRET_WRITES.inc()
        return answer

    def managed_secrets(
        self, ref: RegistryRef, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """The ocireg Secrets of this registry object's name (RegistryRef.selector):
        its own, and others' of the same name, which callers tell apart with
        ownership.claim."""
        if namespace is None:
            return list_all(
                self.core.list_secret_for_all_namespaces,
                PAGES["secrets"],
                label_selector=ref.selector(),
            )
        return list_all(
            self.core.list_namespaced_secret,
            PAGES["secrets"],
            namespace=namespace,
            label_selector=ref.selector(),
        )

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        try:
            self.core.delete_namespaced_secret(name, namespace, body=_delete_options(uid))
        except ApiException as error:
            if error.status not in (404, 409):  # gone already, or not the one we listed
                raise

    def watch_source(self, kind: str, label_selector: str | None = None) -> WatchSource:
        """What the index watches: namespaces, ServiceAccounts, and Secrets (ours, by label)."""
        listers = {
            "namespaces": self.core.list_namespace,
            "serviceaccounts": self.core.list_service_account_for_all_namespaces,
            "secrets": self.core.list_secret_for_all_namespaces,
        }
        if kind not in listers:
            raise ValueError(f"no watch source for {kind}")
        if label_selector:
            return WatchSource(listers[kind], PAGES[kind], label_selector=label_selector)
        return WatchSource(listers[kind], PAGES[kind])

    def metadata_source(self, kind: str, label_selector: str) -> WatchSource:
        """The metadata of every Secret or ConfigMap matching ``label_selector``, in every
        namespace: what registry objects read (their changes run the readers again)."""
        listers = {
            "secrets": self.core.list_secret_for_all_namespaces,
            "configmaps": self.core.list_config_map_for_all_namespaces,
        }
        return WatchSource(
            listers[kind], METADATA_PAGE, metadata_only=True, label_selector=label_selector
        )

    def patch_registry_status(self, ref: RegistryRef, status: dict[str, Any]) -> None:
        """Merge ``status`` into the object's status (for work done outside a kopf handler,
        which would otherwise write it). A deleted object is not an error."""
        plural, body = PLURALS[ref.kind], {"status": status}
        try:
            if ref.namespace:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, ref.namespace, plural, ref.name, body
                )
            else:
                self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, plural, ref.name, body
                )
        except ApiException as error:
            if error.status != 404:
                raise

    def service_accounts(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """ServiceAccounts of one namespace, or of all namespaces with None."""
        try:
            if namespace is None:
                return list_all(
                    self.core.list_service_account_for_all_namespaces, PAGES["serviceaccounts"]
                )
            return list_all(
                self.core.list_namespaced_service_account,
                PAGES["serviceaccounts"],
                namespace=namespace,
            )
        except ApiException as error:
            if error.status == 404:
                return []
            raise

    def read_config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        try:
            config_map = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            # As for Secrets: a condition, not an exception kopf would retry without one.
            if error.status == 403:
                raise ReconcileError(
                    Reason.FORBIDDEN, f"the operator may not read ConfigMap {namespace}/{name}"
                ) from None
            raise ReconcileError(
                Reason.API_ERROR,
                f"reading ConfigMap {namespace}/{name}: HTTP {error.status}",
                transient=True,
            ) from None
        return {k: v.encode() for k, v in (config_map.get("data") or {}).items()}

    def read_config_map_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _unless_absent(self.core.read_namespaced_config_map, name, namespace)

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
                    Reason.API_ERROR,
                    f"writing ConfigMap {namespace}/{name}: HTTP {error.status}",
                    transient=True,
                ) from None
            return decision
        return "conflict"

    def delete_config_map(self, namespace: str, name: str, uid: str | None = None) -> None:
        try:
            self.core.delete_namespaced_config_map(name, namespace, body=_delete_options(uid))
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
                    current = self.core.read_namespaced_service_account(name, namespace)
                except ApiException as error:
                    if error.status == 404:
                        return False
                    raise
            patch = change(current)
            if patch is None:
                return False
            try:
                answer = self.core.patch_namespaced_service_account(name, namespace, patch)
                if written is not None:
                    written(answer)
                return True
            except ApiException as error:
                if error.status == 404:
                    return False
                if error.status != 409:
                    raise
                current = None  # changed since we looked: look again
        raise ReconcileError(
            Reason.CONFLICT,
            f"ServiceAccount {namespace}/{name} kept changing while being updated",
            transient=True,
        )
