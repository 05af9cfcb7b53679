"""The OCIRegistry / ClusterOCIRegistry spec. The CRDs in crds/ are generated from these
models (``ocireg crds``), so descriptions here are what ``kubectl explain`` shows."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from .base import ApiModel
from .charts import Charts
from .cloud import AcrAuth, EcrAuth, GcpAuth, WebhookAuth
from .common import (  # noqa: F401 - re-exported for the CRD generator and providers
    CLUSTER_ONLY,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    NAMESPACED_REQUIRED,
    SecretRef,
    cluster_only,
    rules,
)
from .durations import DURATION_PATTERN, RENEW_BEFORE_PATTERN

# host[:port]; `{region}` may stand in the host for per-region endpoints.
SERVER_PATTERN = r"^[A-Za-z0-9{]([A-Za-z0-9.{}-]*[A-Za-z0-9}])?(:[0-9]{1,5})?$"


class Anonymous(ApiModel):
    """No credentials: the registry allows anonymous pulls."""


class BasicAuth(ApiModel):
    """A username and password (or access token used as a password): Docker Hub and GHCR
    personal access tokens, Quay and Harbor robot accounts, ACR admin users, GAR `_json_key`."""

    secret_ref: Annotated[SecretRef, Field(description="Secret holding the credentials.")]
    username: Annotated[
        str | None,
        Field(
            description="Literal username, for when the Secret holds only the password "
            "(e.g. `_json_key`, `robot$ci`, `org+robot`). Overrides usernameKey.",
            max_length=256,
        ),
    ] = None
    username_key: Annotated[
        str, Field(description="Key in the Secret holding the username.", max_length=253)
    ] = "username"
    password_key: Annotated[
        str, Field(description="Key in the Secret holding the password or token.", max_length=253)
    ] = "password"  # noqa: S105 - a key name, not a secret


class TokenType(StrEnum):
    identity = "IdentityToken"
    registry = "RegistryToken"


class TokenAuth(ApiModel):
    """A token issued by the registry. An IdentityToken (OAuth2 refresh token, what
    `docker login` stores as identitytoken) is exchanged at the registry's token server; a
    RegistryToken is sent as a Bearer token as-is."""

    secret_ref: Annotated[SecretRef, Field(description="Secret holding the token.")]
    key: Annotated[
        str, Field(description="Key in the Secret holding the token.", max_length=253)
    ] = "token"
    type: Annotated[TokenType, Field(description="How clients present the token.")] = (
        TokenType.identity
    )
    username: Annotated[
        str | None,
        Field(
            description="Username written beside the token, for tools that want one.",
            max_length=256,
        ),
    ] = None


class DockerConfigAuth(ApiModel):
    """An existing Docker config (config.json or a kubernetes.io/dockerconfigjson Secret);
    the entry for `server` is used."""

    secret_ref: Annotated[SecretRef, Field(description="Secret holding the Docker config.")]
    key: Annotated[
        str, Field(description="Key in the Secret holding the Docker config JSON.", max_length=253)
    ] = ".dockerconfigjson"


class AuthMethods(ApiModel):
    # One field per auth method, in the order the CRD lists them: adding a method is adding
    # a field here (and its backend to ocireg.providers' table). Auth adds the one-of rule.

    anonymous: Annotated[Anonymous | None, Field(description=Anonymous.__doc__)] = None
    basic: Annotated[BasicAuth | None, Field(description=BasicAuth.__doc__)] = None
    token: Annotated[TokenAuth | None, Field(description=TokenAuth.__doc__)] = None
    docker_config: Annotated[
        DockerConfigAuth | None, Field(description=DockerConfigAuth.__doc__)
    ] = None
    ecr: Annotated[EcrAuth | None, Field(description=EcrAuth.__doc__)] = None
    gcp: Annotated[GcpAuth | None, Field(description=GcpAuth.__doc__)] = None
    acr: Annotated[AcrAuth | None, Field(description=AcrAuth.__doc__)] = None
    webhook: Annotated[WebhookAuth | None, Field(description=WebhookAuth.__doc__)] = None


# Each method's name on the wire (the field's camelCase alias) -> its Python attribute.
_METHOD_FIELDS = {field.alias or name: name for name, field in AuthMethods.model_fields.items()}
# The auth methods, in declared order: the one list, derived from the fields above.
AUTH_METHODS = tuple(_METHOD_FIELDS)


class Auth(AuthMethods):
    model_config = rules(
        (
            "[" + ", ".join(f"has(self.{m})" for m in AUTH_METHODS) + "].filter(x, x).size() == 1",
            "set exactly one auth method: " + ", ".join(AUTH_METHODS),
        )
    )

    @property
    def method(self) -> str:
        for method, attribute in _METHOD_FIELDS.items():
            if getattr(self, attribute) is not None:
                return method
        return "none"


class CABundleRef(ApiModel):
    model_config = rules(
        ("has(self.configMap) != has(self.secret)", "set exactly one of configMap or secret"),
    )

    config_map: Annotated[
        str | None,
        Field(
            description="ConfigMap holding the CA bundle.", max_length=253, pattern=DNS_SUBDOMAIN
        ),
    ] = None
    secret: Annotated[
        str | None,
        Field(description="Secret holding the CA bundle.", max_length=253, pattern=DNS_SUBDOMAIN),
    ] = None
    key: Annotated[str, Field(description="Key holding PEM certificates.", max_length=253)] = (
        "ca.crt"
    )
    namespace: Annotated[
        str | None,
        cluster_only(
            "Namespace of the ConfigMap or Secret. ClusterOCIRegistry only; defaults to the "
            "operator's credentials namespace.",
            max_length=63,
            pattern=DNS_LABEL,
        ),
    ] = None


class TLS(ApiModel):
    """How to connect: HTTPS verified against the system roots (default), against a CA
    bundle, without verification, or plain HTTP."""

    model_config = rules(
        (
            "!(self.insecure && has(self.caBundleRef))",
            "caBundleRef has no effect with insecure (plain HTTP)",
        ),
        (
            "!(self.insecure && self.insecureSkipVerify)",
            "choose insecure (plain HTTP) or insecureSkipVerify (HTTPS without verification)",
        ),
    )

    insecure: Annotated[bool, Field(description="Plain HTTP, no TLS.")] = False
    insecure_skip_verify: Annotated[
        bool, Field(description="HTTPS without certificate verification.")
    ] = False
    ca_bundle_ref: Annotated[
        CABundleRef | None, Field(description="Trust these CA certificates for the registry.")
    ] = None


class LabelSelectorRequirement(ApiModel):
    key: Annotated[str, Field(description="The label key.", max_length=317)]
    operator: Annotated[
        str,
        Field(
            description="In, NotIn, Exists or DoesNotExist.",
            json_schema_extra={"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        ),
    ]
    values: Annotated[
        list[Annotated[str, Field(max_length=63)]],
        Field(description="Label values, for In and NotIn.", max_length=64),
    ] = []


class LabelSelector(ApiModel):
    """A Kubernetes label selector; empty selects every namespace."""

    match_labels: Annotated[
        dict[str, Annotated[str, Field(max_length=63)]],
        Field(description="Labels a namespace must carry, with these values.", max_length=64),
    ] = {}
    match_expressions: Annotated[
        list[LabelSelectorRequirement],
        Field(description="Requirements on labels, all of which must hold.", max_length=64),
    ] = []


class Format(StrEnum):
    dockerconfigjson = "dockerconfigjson"
    basic_auth = "basic-auth"
    env = "env"


class ArgoCDSecretType(StrEnum):
    repo_creds = "repo-creds"
    repository = "repository"


class ArgoCD(ApiModel):
    """An Argo CD repository credential Secret for the registry as a Helm OCI repository
    (type helm, enableOCI "true", url, username, password), written into the namespace Argo
    CD runs in and rewritten with every renewal like the pull secrets. Argo CD does not read
    dockerconfigjson Secrets for Helm charts. Named after secretName with -argocd appended
    (-argocd-2, -3 ... for further registry hosts, e.g. more ECR regions)."""

    namespace: Annotated[
        str | None,
        cluster_only(
            "Namespace Argo CD runs in (default argocd). ClusterOCIRegistry only: an "
            "OCIRegistry writes the Secret into its own namespace, for an Argo CD running there.",
            max_length=63,
            pattern=DNS_LABEL,
        ),
    ] = None
    secret_type: Annotated[
        ArgoCDSecretType,
        Field(
            description="repo-creds: a credential template Argo CD uses for every Helm "
            "repository URL starting with url (the longest match wins); repository: one "
            "repository, whose url an Application's source.repoURL names exactly.",
        ),
    ] = ArgoCDSecretType.repo_creds
    path: Annotated[
        str | None,
        Field(
            description="Path under the registry host that url ends with (default: "
            "repositoryPrefix). url is host/path without a scheme, as Argo CD wants Helm "
            "OCI repository URLs.",
            max_length=255,
            pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$",
        ),
    ] = None


NamespacePattern = Annotated[str, Field(max_length=63, pattern=r"^[a-z0-9*?\[\]-]+$")]


class Targets(ApiModel):
    """Where the credentials are written."""

    secret_name: Annotated[
        str | None,
        Field(
            description="Name of the pull Secret (default: the object's name). The basic-auth "
            "and env formats append -basic-auth and -env, argoCD -argocd.",
            max_length=200,
            pattern=DNS_SUBDOMAIN,
        ),
    ] = None
    namespaces: Annotated[
        list[NamespacePattern] | None,
        cluster_only(
            "Namespaces to write into, by name or glob (team-*). ClusterOCIRegistry only.",
            max_length=256,
        ),
    ] = None
    namespace_selector: Annotated[
        LabelSelector | None,
        cluster_only(
            "Namespaces to write into, by label; {} selects all. ClusterOCIRegistry only."
        ),
    ] = None
    exclude_namespaces: Annotated[
        list[NamespacePattern] | None,
        cluster_only(
            "Namespaces never written into, by name or glob (kube-*). ClusterOCIRegistry only.",
            max_length=256,
        ),
    ] = None
    service_accounts: Annotated[
        list[Annotated[str, Field(max_length=253)]],
        Field(
            description="ServiceAccounts whose imagePullSecrets get the pull Secret, by name; "
            '["*"] for all, including ones created later; [] for none.',
            max_length=256,
        ),
    ] = ["default"]
    formats: Annotated[
        list[Format],
        Field(
            description="Secrets to write: dockerconfigjson (kubernetes.io/dockerconfigjson), "
            "basic-auth (kubernetes.io/basic-auth) and env (OCI_REGISTRY_USERNAME, "
            "OCI_REGISTRY_PASSWORD, OCI_REGISTRY_TOKEN).",
            min_length=1,
            max_length=3,
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = [Format.dockerconfigjson]
    argo_cd: Annotated[
        ArgoCD | None,
        Field(alias="argoCD", description=ArgoCD.__doc__),
    ] = None


class Refresh(ApiModel):
    model_config = rules(
        ("duration(self.interval) >= duration('30s')", "interval must be at least 30s"),
    )

    interval: Annotated[
        str,
        Field(
            description="How often static credentials are re-read and re-verified (Go duration).",
            pattern=DURATION_PATTERN,
            max_length=32,
        ),
    ] = "1h"
    renew_before: Annotated[
        str,
        Field(
            description="Renew expiring credentials this long before expiry: a share of the "
            "lifetime (20%) or a duration (2h).",
            pattern=RENEW_BEFORE_PATTERN,
            max_length=32,
        ),
    ] = "20%"


class Verify(ApiModel):
    """What to check after resolving credentials. The registry's /v2/ endpoint is always
    checked; with a repository, pull (and optionally push) rights there too."""

    repository: Annotated[
        str | None,
        Field(
            description="Repository (relative to repositoryPrefix) to check access to.",
            max_length=255,
            pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$",
        ),
    ] = None
    push: Annotated[bool, Field(description="Also check push rights.")] = False


class RegistrySpec(ApiModel):
    model_config = rules(
        ("has(self.server) || has(self.extends)", "set server (or extends)"),
        ("has(self.auth) || has(self.extends)", "set auth (or extends)"),
    )

    server: Annotated[
        str | None,
        Field(
            description="Registry host[:port], without scheme or path, e.g. ghcr.io or "
            "registry.example.com:5000. Docker Hub is docker.io. For ECR, {region} and "
            "{account} expand to each of auth.ecr.regions and registryIds.",
            max_length=253,
            pattern=SERVER_PATTERN,
            json_schema_extra={
                "x-kubernetes-validations": [
                    {
                        "rule": "!self.contains('://')",
                        "message": "server is host[:port] without a scheme (drop https://)",
                    }
                ]
            },
        ),
    ] = None
    repository_prefix: Annotated[
        str | None,
        Field(
            description="Path under the host that repositories live in, e.g. my-org/charts.",
            max_length=255,
            pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$",
        ),
    ] = None
    extends: Annotated[
        str | None,
        Field(
            description="Inherit the spec of another object of the same kind (same namespace for "
            "OCIRegistry); fields set here override it.",
            max_length=253,
            pattern=DNS_SUBDOMAIN,
        ),
    ] = None
    auth: Annotated[Auth | None, Field(description="How to authenticate.")] = None
    tls: Annotated[TLS | None, Field(description=TLS.__doc__)] = None
    targets: Annotated[Targets | None, Field(description=Targets.__doc__)] = None
    refresh: Annotated[Refresh | None, Field(description="Renewal and re-verification.")] = None
    verify: Annotated[Verify | None, Field(description=Verify.__doc__)] = None
    charts: Annotated[Charts | None, Field(description=Charts.__doc__)] = None

    @property
    def effective_targets(self) -> Targets:
        return self.targets or Targets()

    @property
    def effective_refresh(self) -> Refresh:
        return self.refresh or Refresh()

    @property
    def effective_tls(self) -> TLS:
        return self.tls or TLS()
