"""Pieces the spec models share: name patterns, CEL rule helpers, Secret references."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from .base import ApiModel

# Marks a field that only the cluster-scoped kind may set; the CRD generator turns it into a
# CEL rule on the namespaced kind with a message saying why.
CLUSTER_ONLY = "x-ocireg-cluster-only"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Marks a field the namespaced kind must set (it may not fall back to the operator's own
# cloud identity); the CRD generator turns it into a CEL rule on the namespaced kind.
NAMESPACED_REQUIRED = "x-ocireg-namespaced-required"


def rules(*pairs: tuple[str, str]) -> ConfigDict:
    """Model config adding CEL validation rules (rule, message) to the model's schema."""
    return ConfigDict(
        **ApiModel.model_config,
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": r, "message": m} for r, m in pairs]
        },
    )


def cluster_only(description: str, **kwargs: Any) -> Any:
    return Field(description=description, json_schema_extra={CLUSTER_ONLY: True}, **kwargs)


class SecretRef(ApiModel):
    name: Annotated[
        str, Field(description="Name of the Secret.", max_length=253, pattern=DNS_SUBDOMAIN)
    ]
    namespace: Annotated[
        str | None,
        cluster_only(
            "Namespace of the Secret. ClusterOCIRegistry only; defaults to the operator's "
            "credentials namespace (ocireg-system unless configured).",
            max_length=63,
            pattern=DNS_LABEL,
        ),
    ] = None
