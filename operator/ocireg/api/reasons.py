"""Every reason an error gives on the CredentialsReady, Ready and Stalled conditions and in
its Warning Event, documented next to the API types, with whether it stalls: a stalling reason
is one that retrying alone cannot fix (the user has to change an object, a Secret or a
permission), so the object says Stalled=True and waits for a change instead of a retry.
Choosing the reason where an error is raised chooses that too (Flux's stalling and waiting
errors); a transient error (transient=True) never stalls, whatever its reason."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    stalls: bool

    def __new__(cls, value: str, stalls: bool = False) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.stalls = stalls
        return member

    # -- what the object says or refers to (the user changes the object) --------------------
    INVALID_SPEC = "InvalidSpec", True
    UNSUPPORTED_AUTH = "UnsupportedAuth", True
    BASE_NOT_FOUND = "BaseNotFound", True  # extends names an object that does not exist
    EXTENDS_LOOP = "ExtendsLoop", True
    EXTENDS_TOO_DEEP = "ExtendsTooDeep", True
    CROSS_NAMESPACE_REFERENCE = "CrossNamespaceReference", True
    # -- Secrets, ConfigMaps and ServiceAccounts it reads -------------------------------------
    SECRET_NOT_FOUND = "SecretNotFound", True
    CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound", True
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound", True
    KEY_MISSING = "KeyMissing", True
    INVALID_SECRET = "InvalidSecret", True
    INVALID_DOCKER_CONFIG = "InvalidDockerConfig", True
    INVALID_CA_BUNDLE = "InvalidCABundle", True
    # -- permissions and policy (a platform team's change) -----------------------------------
    FORBIDDEN = "Forbidden", True  # the operator's own RBAC
    ACCESS_DENIED = "AccessDenied", True  # the cloud's IAM
    NO_CREDENTIALS = "NoCredentials", True  # no ambient cloud identity to use
    AMBIENT_IDENTITY_NOT_ALLOWED = "AmbientIdentityNotAllowed", True
    AMBIENT_DESTINATION_NOT_ALLOWED = "AmbientDestinationNotAllowed", True
    EGRESS_NOT_ALLOWED = "EgressNotAllowed", True
    WEBHOOK_ADDRESS_NOT_ALLOWED = "WebhookAddressNotAllowed", True
    # -- what the registry or token server answered ------------------------------------------
    AUTHENTICATION_FAILED = "AuthenticationFailed", True
    PERMISSION_DENIED = "PermissionDenied", True
    REPOSITORY_NOT_FOUND = "RepositoryNotFound", True
    TLS_ERROR = "TLSError", True
    WEBHOOK_TLS_ERROR = "WebhookTLSError", True
    # -- retried: they may go away by themselves ----------------------------------------------
    UNREACHABLE = "Unreachable"
    RATE_LIMITED = "RateLimited"
    REGISTRY_ERROR = "RegistryError"
    INVALID_RESPONSE = "InvalidResponse"
    ANSWER_TOO_LARGE = "AnswerTooLarge"
    PROVIDER_ERROR = "ProviderError"
    PROVIDER_UNREACHABLE = "ProviderUnreachable"
    INVALID_PROVIDER_ANSWER = "InvalidProviderAnswer"
    WEBHOOK_ERROR = "WebhookError"
    WEBHOOK_UNREACHABLE = "WebhookUnreachable"
    API_ERROR = "APIError"  # the Kubernetes API answered an unexpected status
    API_ANSWER_TOO_LARGE = "APIAnswerTooLarge"
    CONFLICT = "Conflict"  # an object kept changing while being written
    WATCHES_NOT_SYNCED = "WatchesNotSynced"
    UNSUPPORTED = "Unsupported"  # a call this context cannot make (ServiceAccount tokens)
