"""AWS ECR (and ECR Public) through boto3: GetAuthorizationToken per region, with the identity
from a Secret's keys, a role (AssumeRole with externalId), a ServiceAccount's web identity
(AssumeRoleWithWebIdentity), or the operator's own chain (cluster kind only)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore
import botocore.config
import botocore.exceptions

from ocireg.api.cloud import EcrAuth, ServiceAccountRef
from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.reasons import Reason
from ocireg.api.spec import RegistrySpec
from ocireg.providers import ResolveContext, check_ambient_destination

PUBLIC_HOST = "public.ecr.aws"
WEB_IDENTITY_AUDIENCE = "sts.amazonaws.com"
_BOTO_CONFIG = botocore.config.Config(
    connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"}
)
_UNSIGNED = _BOTO_CONFIG.merge(botocore.config.Config(signature_version=botocore.UNSIGNED))
# AWS error codes a retry cannot fix.
_PERMANENT = {
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "InvalidIdentityToken",
    "ExpiredTokenException",
    "InvalidParameterException",
    "ValidationError",
}


def _key(data: Mapping[str, bytes], key: str, where: str, required: bool = True) -> str | None:
    value = data.get(key, b"").decode(errors="replace").strip()
    if not value and required:
        raise ReconcileError(Reason.KEY_MISSING, f"Secret {where} has no key {key!r}")
    return value or None


def _aws_error(error: Exception, action: str) -> ReconcileError:
    if isinstance(error, botocore.exceptions.ClientError):
        code = error.response.get("Error", {}).get("Code", "Unknown")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        retry_after = 30.0 if code in ("ThrottlingException", "Throttling") else None
        transient = code not in _PERMANENT and (status >= 500 or status in (0, 429) or retry_after)
        reason = Reason.ACCESS_DENIED if code in _PERMANENT else Reason.PROVIDER_ERROR
        return ReconcileError(
            reason,
            f"AWS {action} failed: {code} (HTTP {status})",
            transient=bool(transient),
            retry_after=retry_after,
        )
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return ReconcileError(
            Reason.NO_CREDENTIALS, f"AWS {action}: the operator has no AWS identity of its own"
        )
    if isinstance(error, botocore.exceptions.BotoCoreError):
        return ReconcileError(
            Reason.PROVIDER_UNREACHABLE,
            f"AWS {action} failed: {type(error).__name__}",
            transient=True,
        )
    raise error


@dataclass(frozen=True)
class Identity:
    """Where the AWS identity comes from, read once per resolve: the cache key and the mint
    are made from the same values."""

    source: str  # "keys" | "web-identity" | "ambient"
    keys: tuple[str | None, ...] = field(default=(), repr=False)  # key id, secret, session token
    account: ServiceAccountRef | None = None


def identity_of(auth: EcrAuth, ctx: ResolveContext) -> Identity:
    creds = auth.credentials
    if creds is not None and creds.secret_ref is not None:
        namespace, data = ctx.secret(creds.secret_ref)
        where = f"{namespace}/{creds.secret_ref.name}"
        keys = (
            _key(data, "accessKeyId", where),
            _key(data, "secretAccessKey", where),
            _key(data, "sessionToken", where, required=False),
        )
        return Identity("keys", keys)
    if creds is not None and creds.service_account_ref is not None:
        return Identity("web-identity", account=creds.service_account_ref)
    ctx.check_ambient_allowed("ecr")
    return Identity("ambient")


def _session(auth: EcrAuth, ctx: ResolveContext, region: str, identity: Identity) -> boto3.Session:
    """The boto3 session for the configured identity."""
    endpoint = ctx.config.aws_endpoint_url
    if identity.source == "keys":
        key_id, secret, token = identity.keys
        session = boto3.Session(
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=token,
            region_name=region,
        )
    elif identity.source == "web-identity":
        assert auth.role_arn is not None  # the CRD requires it with serviceAccountRef
        assert identity.account is not None
        account = ctx.service_account_id(identity.account)
        web_token = ctx.service_account_token(identity.account, WEB_IDENTITY_AUDIENCE)
        # Unsigned: the web identity token is the only proof, never the operator's own keys.
        # It goes to STS only: the endpoint is AWS's (or the operator's --aws-endpoint-url),
        # the region a validated name (the CRD pattern, and botocore's own check).
        sts = boto3.client("sts", region_name=region, endpoint_url=endpoint, config=_UNSIGNED)
        try:
            answer = sts.assume_role_with_web_identity(
                RoleArn=auth.role_arn,
                RoleSessionName=_session_name(account),
                WebIdentityToken=web_token,
            )["Credentials"]
        except Exception as error:
            raise _aws_error(error, "AssumeRoleWithWebIdentity") from None
        return _from_sts(answer, region)
    else:
        session = boto3.Session(region_name=region)
    if auth.role_arn:
        sts = session.client("sts", endpoint_url=endpoint, config=_BOTO_CONFIG)
        kwargs: dict[str, Any] = {
            "RoleArn": auth.role_arn,
            "RoleSessionName": "ocireg",
        }
        if auth.external_id:
            kwargs["ExternalId"] = auth.external_id
        try:
            answer = sts.assume_role(**kwargs)["Credentials"]
        except Exception as error:
            raise _aws_error(error, "AssumeRole") from None
        return _from_sts(answer, region)
    return session


def _session_name(account: str) -> str:
    return ("ocireg-" + account.replace("/", "-"))[:64]


def _from_sts(answer: Mapping[str, Any], region: str) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=answer["AccessKeyId"],
        aws_secret_access_key=answer["SecretAccessKey"],
        aws_session_token=answer["SessionToken"],
        region_name=region,
    )


def _expand(server: str, region: str, account: str | None) -> str:
    host = server.replace("{region}", region)
    return host.replace("{account}", account) if account else host


def _account_of(proxy_endpoint: str) -> str | None:
    host = proxy_endpoint.split("://", 1)[-1].split("/", 1)[0]
    first = host.split(".", 1)[0]
    return first if first.isdigit() else None


def _decode(token: str) -> tuple[str, str]:
    try:
        user, _, password = base64.b64decode(token).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise ReconcileError(
            Reason.INVALID_PROVIDER_ANSWER, "ECR returned an authorization token that is not base64"
        ) from None
    if not password:
        raise ReconcileError(
            Reason.INVALID_PROVIDER_ANSWER, "ECR returned an empty authorization token"
        )
    return user, password


def _regions(spec: RegistrySpec, auth: EcrAuth) -> list[str]:
    assert spec.server is not None
    regions = ["us-east-1"] if spec.server == PUBLIC_HOST else auth.regions
    if len(regions) > 1 and "{region}" not in spec.server:
        raise ReconcileError(
            Reason.INVALID_SPEC,
            f"{len(regions)} regions are listed but server has no {{region}} to expand",
        )
    return regions


def mint(spec: RegistrySpec, ctx: ResolveContext, identity: Identity) -> Credential:
    auth = spec.auth.ecr if spec.auth else None
    assert auth is not None
    assert spec.server is not None
    public = spec.server == PUBLIC_HOST
    regions = _regions(spec, auth)
    passwords: list[tuple[str, str]] = []
    expiries = []
    username = "AWS"
    for region in regions:
        session = _session(auth, ctx, region, identity)
        service = "ecr-public" if public else "ecr"
        client = session.client(
            service, endpoint_url=ctx.config.aws_endpoint_url, config=_BOTO_CONFIG
        )
        try:
            if public:
                data = [client.get_authorization_token()["authorizationData"]]
            elif auth.registry_ids:
                data = client.get_authorization_token(registryIds=auth.registry_ids)[
                    "authorizationData"
                ]
            else:
                data = client.get_authorization_token()["authorizationData"]
        except Exception as error:
            raise _aws_error(error, f"GetAuthorizationToken in {region}") from None
        for item in data:
            username, password = _decode(item["authorizationToken"])
            # Which account an answer is for comes from its endpoint, not from its position.
            account = _account_of(item.get("proxyEndpoint", ""))
            passwords.append((_expand(spec.server, region, account), password))
            if item.get("expiresAt"):
                expiries.append(item["expiresAt"])
    hosts = tuple(dict.fromkeys(host for host, _ in passwords))
    return Credential(
        "ecr",
        hosts,
        username=username,
        password=passwords[0][1],
        passwords=tuple(passwords),
        expires_at=min(expiries) if expiries else None,
    )


def resolve(spec: RegistrySpec, ctx: ResolveContext) -> Credential:
    auth = spec.auth.ecr if spec.auth else None
    assert auth is not None
    assert spec.server is not None
    # The identity is read without calling AWS (reading a Secret is cheap), so ticks can ask
    # the cache without minting.
    identity = identity_of(auth, ctx)
    if identity.source == "ambient":
        # An ECR password of the operator's own identity goes to ECR's endpoints only.
        # {account} is filled from AWS's answer: always one label of 12 digits.
        hosts = [_expand(spec.server, region, "0" * 12) for region in _regions(spec, auth)]
        check_ambient_destination("ecr", hosts, ctx)
    # Safe: static keys are in the key whole (the secret key and session token, not only the
    # public key id); a web identity is its ServiceAccount's, and tenants can name only their
    # own namespace's (the trust domain adds it); ambient is the operator's own, allowed for
    # this object by check_ambient_allowed. Everything else the mint sends is in too.
    key = ctx.mint_key(
        "ecr",
        identity.source,
        identity.keys,
        ctx.service_account_id(identity.account) if identity.account else None,
        auth.role_arn,
        auth.external_id,
        spec.server,
        tuple(auth.regions),
        tuple(auth.registry_ids or ()),
    )
    return ctx.minted(key, lambda: mint(spec, ctx, identity))
