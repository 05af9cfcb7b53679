"""Azure Container Registry: an Entra ID access token from azure-identity (client secret,
workload identity, or the operator's own managed/workload identity for the cluster kind),
exchanged at https://<registry>/oauth2/exchange for an ACR refresh token. The refresh token's
JWT `exp` is its expiry; username 00000000-0000-0000-0000-000000000000."""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import ssl
from collections.abc import Iterator
from typing import Any

import requests
from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError

from ocireg import egress
from ocireg.api.cloud import AcrAuth
from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.reasons import Reason
from ocireg.api.spec import RegistrySpec
from ocireg.oci import TLSOptions, parse_retry_after
from ocireg.providers import ResolveContext, check_ambient_destination

USERNAME = "00000000-0000-0000-0000-000000000000"
SCOPE = "https://management.azure.com/.default"
WORKLOAD_AUDIENCE = "api://AzureADTokenExchange"
MAX_ANSWER_BYTES = 64 * 1024
EXCHANGE_DEADLINE = 30.0  # seconds for the whole exchange: connect, TLS, the answer


def jwt_expiry(token: str) -> dt.datetime | None:
    """The `exp` claim of a JWT, read without verifying it (the registry verifies it; we only
    need to know when to renew)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    try:
        return dt.datetime.fromtimestamp(exp, dt.UTC)
    except (OverflowError, ValueError, OSError):  # NaN, infinity, years beyond 9999
        return None


def _credential(
    auth: AcrAuth, ctx: ResolveContext
) -> tuple[TokenCredential, tuple[object, ...], bool]:
    """The Entra credential, the inputs that make it (for the cache key) and whether it is
    the operator's own (ambient) identity."""
    from azure import identity

    authority: dict[str, Any] = {}
    if ctx.config.azure_authority_host:
        authority = {"authority": ctx.config.azure_authority_host}
    creds = auth.credentials
    named = creds is not None and (creds.secret_ref or creds.service_account_ref)
    if named and not (auth.tenant_id and auth.client_id):
        raise ReconcileError(
            Reason.INVALID_SPEC, "auth.acr needs tenantId and clientId with these credentials"
        )
    if creds is not None and creds.secret_ref is not None:
        namespace, data = ctx.secret(creds.secret_ref)
        secret = data.get("clientSecret", b"").decode(errors="replace").strip()
        if not secret:
            raise ReconcileError(
                Reason.KEY_MISSING,
                f"Secret {namespace}/{creds.secret_ref.name} has no key 'clientSecret'",
            )
        assert auth.tenant_id  # checked above
        assert auth.client_id
        credential: Any = identity.ClientSecretCredential(
            auth.tenant_id, auth.client_id, secret, disable_instance_discovery=True, **authority
        )
        # Safe: the client secret itself is in the key (the ids next to it are public).
        return credential, ("secret", auth.tenant_id, auth.client_id, secret), False
    if creds is not None and creds.service_account_ref is not None:
        sa = creds.service_account_ref
        assert auth.tenant_id  # checked above
        assert auth.client_id
        credential = identity.ClientAssertionCredential(
            auth.tenant_id,
            auth.client_id,
            lambda: ctx.service_account_token(sa, WORKLOAD_AUDIENCE),
            disable_instance_discovery=True,
            **authority,
        )
        # Safe: the proof is a token for this ServiceAccount, which only its own namespace's
        # objects (the trust domain) or cluster objects may name; the Entra tenant and app
        # say which identity the token is exchanged for.
        account = ctx.service_account_id(sa)
        return credential, ("workload", account, auth.tenant_id, auth.client_id), False
    ctx.check_ambient_allowed("acr")
    # Safe: the operator's own identity, which check_ambient_allowed let this object use.
    if auth.client_id:
        managed = identity.ManagedIdentityCredential(client_id=auth.client_id)
        return managed, ("managed", auth.client_id), True
    return identity.DefaultAzureCredential(**authority), ("ambient",), True


def _cause(error: BaseException) -> str:
    """The innermost exception's type and text: says refused vs TLS vs timeout. urllib3 and
    requests messages name host and port only, never credentials."""
    while error.__context__ is not None and error.__context__ is not error:
        error = error.__context__
    return f"{type(error).__name__}: {str(error)[:160]}"


@contextlib.contextmanager
def _verify_option(tls: TLSOptions) -> Iterator[bool | ssl.SSLContext]:
    """requests' verify= for the registry's TLS options (a CA bundle is loaded in memory,
    egress.trust_context: no temporary file)."""
    if tls.skip_verify:
        yield False
        return
    if not tls.ca_bundle:
        yield True
        return
    try:
        context = egress.trust_context(tls.ca_bundle)
    except ssl.SSLError:
        raise ReconcileError(
            Reason.TLS_ERROR,
            "the CA bundle for the registry holds no usable PEM certificate; check the object "
            "tls.caBundleRef points to",
        ) from None
    yield context


def _exchange(
    url: str,
    registry: str,
    tenant: str | None,
    access_token: str,
    verify: bool | ssl.SSLContext,
    policy: egress.EgressPolicy = egress.UNRESTRICTED,
) -> str:
    form = {"grant_type": "access_token", "service": registry, "access_token": access_token}
    if tenant:
        form["tenant"] = tenant
    try:
        # Under the object's egress policy, within a total deadline, the answer streamed and
        # cut at MAX_ANSWER_BYTES (a refresh token is a few KiB).
        with egress.session(policy) as session, egress.deadline(EXCHANGE_DEADLINE) as deadline:
            try:
                response = session.post(
                    url,
                    data=form,
                    timeout=10,
                    verify=verify,  # type: ignore[arg-type]  # an SSLContext: egress's adapter takes it
                    allow_redirects=False,
                    stream=True,
                )
                with response:
                    body = egress.read_capped(response, MAX_ANSWER_BYTES)
            except requests.exceptions.RequestException:
                if deadline.expired:
                    raise egress.DeadlineExceeded(EXCHANGE_DEADLINE) from None
                raise
    except egress.EgressRefused as refused:
        raise ReconcileError(
            Reason.EGRESS_NOT_ALLOWED, refused.describe("the ACR token exchange host")
        ) from None
    except egress.DeadlineExceeded:
        raise ReconcileError(
            Reason.PROVIDER_UNREACHABLE,
            f"the ACR token exchange at {registry} sent no complete answer within "
            f"{EXCHANGE_DEADLINE:g} s",
            transient=True,
        ) from None
    except egress.AnswerTooLarge:
        raise ReconcileError(
            Reason.ANSWER_TOO_LARGE,
            f"the ACR token exchange at {registry} answered with more than {MAX_ANSWER_BYTES} "
            "bytes; a refresh token is a few KiB",
        ) from None
    except requests.exceptions.RequestException as error:
        raise ReconcileError(
            Reason.PROVIDER_UNREACHABLE,
            f"the ACR token exchange at {registry} did not answer ({_cause(error)})",
            transient=True,
        ) from None
    if response.status_code == 429 or response.status_code >= 500:
        retry = response.headers.get("Retry-After")
        raise ReconcileError(
            Reason.PROVIDER_ERROR,
            f"the ACR token exchange at {registry} answered HTTP {response.status_code}",
            transient=True,
            retry_after=parse_retry_after(retry),
        )
    if response.status_code != 200:
        raise ReconcileError(
            Reason.ACCESS_DENIED,
            f"the ACR token exchange at {registry} refused the Entra token "
            f"(HTTP {response.status_code}); check the identity's role on the registry",
        )
    try:
        token = json.loads(body).get("refresh_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise ReconcileError(
            Reason.INVALID_PROVIDER_ANSWER,
            f"the ACR token exchange at {registry} sent no refresh_token",
        )
    return token


def mint(spec: RegistrySpec, ctx: ResolveContext, credential: TokenCredential) -> Credential:
    auth = spec.auth.acr if spec.auth else None
    assert auth is not None
    assert spec.server is not None
    try:
        access = credential.get_token(SCOPE)
    except ClientAuthenticationError as error:
        raise ReconcileError(
            Reason.ACCESS_DENIED,
            f"Entra ID refused to issue a token ({type(error).__name__}); check tenantId, "
            "clientId and the secret or federated credential",
        ) from None
    except AzureError as error:
        raise ReconcileError(
            Reason.PROVIDER_UNREACHABLE,
            f"Entra ID did not answer ({type(error).__name__})",
            transient=True,
        ) from None
    # The exchange is the registry's own endpoint: reach it the way the registry is reached.
    tls = ctx.registry_tls
    scheme = "http" if tls.insecure else "https"
    url = ctx.config.acr_exchange_url or f"{scheme}://{spec.server}/oauth2/exchange"
    # The object's endpoint obeys its egress policy; one the operator configured is its own.
    policy = (
        egress.UNRESTRICTED
        if ctx.config.acr_exchange_url
        else egress.EgressPolicy.for_object(ctx.namespaced, ctx.config.egress_allowed_cidrs)
    )
    with _verify_option(tls) as verify:
        refresh = _exchange(url, spec.server, auth.tenant_id, access.token, verify, policy)
    return Credential(
        "acr", (spec.server,), username=USERNAME, password=refresh, expires_at=jwt_expiry(refresh)
    )


def resolve(spec: RegistrySpec, ctx: ResolveContext) -> Credential:
    auth = spec.auth.acr if spec.auth else None
    assert auth is not None
    credential, identity, ambient = _credential(auth, ctx)
    if ambient:
        # The managed identity's Entra token is POSTed to the registry: ACR login servers only.
        check_ambient_destination("acr", (spec.server or "",), ctx)
    tls = ctx.registry_tls
    # The exchange's channel is an input too: a refresh token got over unverified TLS may
    # come from anyone on the path, and is not handed to objects that verify.
    key = ctx.mint_key("acr", identity, spec.server, tls.insecure, tls.skip_verify, tls.ca_bundle)
    # A refresh token without a readable `exp` is renewed every refresh.interval.
    return ctx.minted(key, lambda: mint(spec, ctx, credential), max_age=ctx.refresh_interval)
