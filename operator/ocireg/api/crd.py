"""Generate the CustomResourceDefinitions from the pydantic models.

Pydantic's JSON schema is close to what Kubernetes wants; the differences handled here:
references are inlined (structural schemas have no $ref), Optional's ``anyOf [X, null]``
becomes X, titles go, and fields marked cluster-only become CEL rules on the namespaced kind.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .common import CLUSTER_ONLY, NAMESPACED_REQUIRED
from .names import CATEGORY, GROUP, VERSION
from .spec import AUTH_METHODS, RegistrySpec
from .status import RegistryStatus

_DROP = {"title"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {options} structurally")
        node = {**options[0], **node}
        if node.get("default", ...) is None:
            del node["default"]
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        node = {**target, **node}  # the field's own description wins over the model's
    if isinstance(node.get("description"), str):  # docstrings carry their indentation
        node["description"] = " ".join(node["description"].split())
    if node.get("properties") == {}:
        # An object with no fields (auth.anonymous): the API server drops `properties: {}`,
        # so keeping it would make every apply of the CRD look like a change to GitOps tools.
        del node["properties"]
    return {k: _resolve(v, defs) for k, v in node.items() if k not in _DROP}


def _cluster_only_rules(node: Any, namespaced: bool, kind: str) -> Any:
    """Strip the cluster-only markers; on the namespaced kind turn them into CEL rules."""
    if isinstance(node, list):
        return [_cluster_only_rules(item, namespaced, kind) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _cluster_only_rules(v, namespaced, kind) for k, v in node.items()}
    properties = node.get("properties", {})
    marked = [name for name, prop in properties.items() if prop.pop(CLUSTER_ONLY, False)]
    required = [name for name, prop in properties.items() if prop.pop(NAMESPACED_REQUIRED, False)]
    if namespaced and required:
        node.setdefault("x-kubernetes-validations", []).extend(
            {
                "rule": f"has(self.{name})",
                "message": f"an {kind} must set {name}: only a ClusterOCIRegistry may use the "
                "operator's own cloud identity",
            }
            for name in required
        )
    if namespaced and marked:
        node.setdefault("x-kubernetes-validations", []).extend(
            {
                "rule": f"!has(self.{name})",
                "message": f"{name} is only allowed on ClusterOCIRegistry: an {kind} reads and "
                "writes only in its own namespace",
            }
            for name in marked
        )
    return node


def status_schema() -> dict[str, Any]:
    raw = RegistryStatus.model_json_schema(by_alias=True, mode="serialization")
    schema: dict[str, Any] = _strip_defaults(_resolve(raw, raw.pop("$defs", {})))
    schema["description"] = "Observed state, written by the operator."
    return schema


def _strip_defaults(node: Any) -> Any:
    """Status is written whole by the operator; server-side defaults would only add noise."""
    if isinstance(node, list):
        return [_strip_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}


def spec_schema(namespaced: bool) -> dict[str, Any]:
    raw = RegistrySpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    kind = "OCIRegistry" if namespaced else "ClusterOCIRegistry"
    schema: dict[str, Any] = _cluster_only_rules(_resolve(raw, defs), namespaced, kind)
    schema["description"] = (
        "Desired state: where the registry is, how to authenticate, where to write pull secrets."
    )
    return schema


def _columns() -> list[dict[str, Any]]:
    """What `kubectl get` shows (priority 1: only with -o wide). Only past times may be
    `date` columns: kubectl shows a `date` as the time since it, and a future one as
    `<invalid>`; a column cannot count down, and a status field that did would be stale
    between writes (or cost a write per object per tick). So expiry and the next refresh
    are shown as the RFC 3339 times the status holds."""
    ready = '.status.conditions[?(@.type=="Ready")]'
    return [
        {"name": "Server", "type": "string", "jsonPath": ".spec.server"},
        {
            "name": "Auth",
            "type": "string",
            "description": "The auth method that produced the credentials.",
            "jsonPath": ".status.credentials.provider",
        },
        {"name": "Ready", "type": "string", "jsonPath": f"{ready}.status"},
        {
            "name": "Expires",
            "type": "string",
            "description": "When the current credentials expire (UTC); empty if they do not.",
            "jsonPath": ".status.credentials.expiresAt",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {
            "name": "Namespaces",
            "type": "integer",
            "priority": 1,
            "description": "Namespaces holding the pull secret.",
            "jsonPath": ".status.targets.namespaces",
        },
        {
            "name": "Next Refresh",
            "type": "string",
            "priority": 1,
            "description": "When the credentials are next renewed or re-verified (UTC).",
            "jsonPath": ".status.credentials.nextRefreshAt",
        },
        {"name": "Reason", "type": "string", "priority": 1, "jsonPath": f"{ready}.reason"},
        {"name": "Message", "type": "string", "priority": 1, "jsonPath": f"{ready}.message"},
    ]


def crd(namespaced: bool) -> dict[str, Any]:
    kind = "OCIRegistry" if namespaced else "ClusterOCIRegistry"
    plural = kind.lower().replace("registry", "registries")
    short = ["ocir"] if namespaced else ["cocir"]
    description = (
        "An OCI registry whose credentials ocireg resolves and writes as pull secrets. "
        + (
            "Namespaced: reads Secrets and writes pull secrets only in its own namespace."
            if namespaced
            else "Cluster-scoped: writes pull secrets into the namespaces it selects."
        )
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/name": "ocireg"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if namespaced else "Cluster",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(namespaced),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_files() -> dict[str, str]:
    """File name -> YAML text, as kept in crds/."""
    out = {}
    for namespaced in (True, False):
        document = crd(namespaced)
        text = "# Generated by `ocireg crds` from operator/ocireg/api; do not edit.\n"
        out[f"{document['metadata']['name']}.yaml"] = text + yaml.safe_dump(
            document, sort_keys=False, width=100
        )
    return out


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in crd_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


__all__ = ["AUTH_METHODS", "crd", "crd_files", "spec_schema", "write_crds"]
