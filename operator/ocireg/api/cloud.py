"""Auth methods that mint short-lived credentials: AWS ECR, GCP, Azure ACR, and a webhook.

Where a method can fall back to the operator's own (ambient) cloud identity, leaving out
``credentials`` means "ambient"; the namespaced kind must name a source it owns instead (a CEL
rule generated from NAMESPACED_REQUIRED says so at apply time)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from .base import ApiModel
from .common import CLUSTER_ONLY, DNS_LABEL, DNS_SUBDOMAIN, NAMESPACED_REQUIRED, SecretRef, rules


def namespaced_required(description: str, **kwargs: Any) -> Any:
    return Field(description=description, json_schema_extra={NAMESPACED_REQUIRED: True}, **kwargs)


class ServiceAccountRef(ApiModel):
    name: Annotated[
        str, Field(description="ServiceAccount name.", max_length=253, pattern=DNS_SUBDOMAIN)
    ]
    namespace: Annotated[
        str | None,
        Field(
            description="Its namespace. ClusterOCIRegistry only; defaults to the operator's "
            "credentials namespace. An OCIRegistry always uses its own namespace.",
            max_length=63,
            pattern=DNS_LABEL,
            json_schema_extra={CLUSTER_ONLY: True},
        ),
    ] = None


def _one_source(*names: str) -> tuple[str, str]:
    return (
        "[" + ", ".join(f"has(self.{n})" for n in names) + "].filter(x, x).size() <= 1",
        "set at most one of " + ", ".join(names) + " (none: the operator's own identity)",
    )


class AwsCredentials(ApiModel):
    """Where the AWS identity comes from."""

    model_config = rules(_one_source("secretRef", "serviceAccountRef"))

    secret_ref: Annotated[
        SecretRef | None,
        Field(description="Static keys: accessKeyId, secretAccessKey and optionally sessionToken."),
    ] = None
    service_account_ref: Annotated[
        ServiceAccountRef | None,
        Field(
            description="Web identity: a token for this ServiceAccount (audience "
            "sts.amazonaws.com) is exchanged with AssumeRoleWithWebIdentity for roleArn."
        ),
    ] = None


class EcrAuth(ApiModel):
    """AWS ECR: GetAuthorizationToken (12 h tokens), renewed before they expire."""

    model_config = rules(
        (
            "!has(self.credentials) || !has(self.credentials.serviceAccountRef) "
            "|| has(self.roleArn)",
            "credentials.serviceAccountRef needs roleArn (the role to assume with the token)",
        )
    )

    regions: Annotated[
        list[Annotated[str, Field(max_length=32, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")]],
        Field(
            description="Regions to log in to; the first is the default. With `{region}` in "
            "server, one entry per region is written into the same pull Secret.",
            min_length=1,
            max_length=32,
        ),
    ] = ["us-east-1"]
    registry_ids: Annotated[
        list[Annotated[str, Field(pattern=r"^[0-9]{12}$")]] | None,
        Field(
            description="AWS account IDs whose registries to log in to (default: the "
            "caller's account).",
            max_length=16,
        ),
    ] = None
    role_arn: Annotated[
        str | None,
        Field(
            description="Role to assume (AssumeRole, or AssumeRoleWithWebIdentity with "
            "serviceAccountRef).",
            max_length=2048,
            pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$",
        ),
    ] = None
    external_id: Annotated[
        str | None, Field(description="ExternalId for AssumeRole.", max_length=1224)
    ] = None
    credentials: Annotated[
        AwsCredentials | None,
        namespaced_required(
            "Where the identity comes from. Leave out to use the operator's own identity "
            "(IRSA, pod identity, instance profile): ClusterOCIRegistry only."
        ),
    ] = None


class GcpCredentials(ApiModel):
    secret_ref: Annotated[
        SecretRef | None,
        Field(description="A service-account JSON key (key `key.json` unless `key` says)."),
    ] = None
    key: Annotated[str, Field(description="Key in the Secret.", max_length=253)] = "key.json"


class GcpAuth(ApiModel):
    """GCP Artifact Registry (`*-docker.pkg.dev`) and Container Registry (`gcr.io`): a 1 h
    OAuth2 access token, username `oauth2accesstoken`."""

    credentials: Annotated[
        GcpCredentials | None,
        namespaced_required(
            "Where the identity comes from. Leave out for the operator's own (ADC: workload "
            "identity, metadata server, GOOGLE_APPLICATION_CREDENTIALS): ClusterOCIRegistry only."
        ),
    ] = None


class AzureCredentials(ApiModel):
    model_config = rules(_one_source("secretRef", "serviceAccountRef"))

    secret_ref: Annotated[
        SecretRef | None,
        Field(description="An app registration's client secret (key `clientSecret`)."),
    ] = None
    service_account_ref: Annotated[
        ServiceAccountRef | None,
        Field(
            description="Workload identity: a token for this ServiceAccount (audience "
            "api://AzureADTokenExchange) is the client assertion."
        ),
    ] = None


class AcrAuth(ApiModel):
    """Azure Container Registry: an Entra ID token exchanged at the registry's
    /oauth2/exchange for an ACR refresh token (about 3 h), username
    00000000-0000-0000-0000-000000000000."""

    tenant_id: Annotated[
        str | None,
        Field(description="Entra tenant ID.", max_length=64, pattern=r"^[0-9a-zA-Z.-]+$"),
    ] = None
    client_id: Annotated[
        str | None,
        Field(description="Application (client) ID.", max_length=64, pattern=r"^[0-9a-fA-F-]+$"),
    ] = None
    credentials: Annotated[
        AzureCredentials | None,
        namespaced_required(
            "Where the identity comes from. Leave out for the operator's own (workload or "
            "managed identity): ClusterOCIRegistry only."
        ),
    ] = None


class WebhookFormat(StrEnum):
    basic = "Basic"  # base64 username:token, Cycle's format
    json = "JSON"


class WebhookAuth(ApiModel):
    """Ask an HTTP endpoint for credentials: GET url with headers from a Secret; the answer is
    base64 `username:token` (format Basic) or a JSON object (format JSON)."""

    model_config = rules(
        (
            "self.url.startsWith('https://') || (has(self.insecure) && self.insecure)",
            "the webhook url must be https:// (set insecure: true to allow plain http)",
        ),
    )

    url: Annotated[
        str,
        Field(
            description="The endpoint, https://... (http:// only with insecure).",
            max_length=2048,
            pattern=r"^https?://[^\s]+$",
        ),
    ]
    headers_secret_ref: Annotated[
        SecretRef | None,
        Field(description="A Secret whose keys and values are sent as request headers."),
    ] = None
    format: Annotated[WebhookFormat, Field(description="Basic or JSON.")] = WebhookFormat.basic
    username_field: Annotated[
        str, Field(description="JSON: field holding the username (dots for nesting).")
    ] = "username"
    password_field: Annotated[
        str, Field(description="JSON: field holding the password or token.")
    ] = "password"  # noqa: S105 - a field name
    expires_at_field: Annotated[
        str | None,
        Field(description="JSON: field holding the expiry (RFC 3339 or Unix seconds)."),
    ] = None
    expires_in_field: Annotated[
        str | None, Field(description="JSON: field holding the lifetime in seconds.")
    ] = None
    username: Annotated[
        str | None, Field(description="Username to use when the answer has none.", max_length=256)
    ] = None
    insecure: Annotated[bool, Field(description="Allow plain http.")] = False
    insecure_skip_verify: Annotated[
        bool, Field(description="Do not verify the webhook's certificate.")
    ] = False
    timeout_seconds: Annotated[
        int, Field(description="Give up after this many seconds.", ge=1, le=60)
    ] = 10
