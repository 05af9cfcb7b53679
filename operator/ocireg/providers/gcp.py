"""GCP Artifact Registry and Container Registry through google-auth: an OAuth2 access token
(1 h) from a service-account key in a Secret, or the operator's own ADC (workload identity,
metadata server, GOOGLE_APPLICATION_CREDENTIALS) for the cluster kind. Username
`oauth2accesstoken`."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2 import service_account

from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.reasons import Reason
from ocireg.api.spec import RegistrySpec
from ocireg.providers import ResolveContext, check_ambient_destination

USERNAME = "oauth2accesstoken"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Token endpoints a key may name. A key is user input: its token_uri must not become a way to
# make the operator call arbitrary (internal) URLs. The operator may add more (test stand-ins).
GOOGLE_TOKEN_URIS = frozenset(
    {"https://oauth2.googleapis.com/token", "https://accounts.google.com/o/oauth2/token"}
)


def _key_info(ctx: ResolveContext, spec: RegistrySpec) -> tuple[dict[str, Any], bytes] | None:
    """The service-account key (parsed, and its bytes as stored), or None for ambient."""
    auth = spec.auth.gcp if spec.auth else None
    assert auth is not None
    if auth.credentials is None or auth.credentials.secret_ref is None:
        ctx.check_ambient_allowed("gcp")
        return None
    ref = auth.credentials.secret_ref
    namespace, data = ctx.secret(ref)
    where = f"{namespace}/{ref.name}"
    if auth.credentials.key not in data:
        raise ReconcileError(
            Reason.KEY_MISSING, f"Secret {where} has no key {auth.credentials.key!r}"
        )
    try:
        info = json.loads(data[auth.credentials.key])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReconcileError(
            Reason.INVALID_SECRET, f"Secret {where}: the key is not JSON"
        ) from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ReconcileError(
            Reason.INVALID_SECRET,
            f"Secret {where}: not a service-account key (type service_account)",
        )
    allowed = GOOGLE_TOKEN_URIS | set(ctx.config.gcp_token_uris)
    if info.get("token_uri") not in allowed:
        raise ReconcileError(
            Reason.INVALID_SECRET,
            f"Secret {where}: the key's token_uri is not a Google token endpoint",
        )
    return info, data[auth.credentials.key]


def _expiry(expiry: dt.datetime | None) -> dt.datetime | None:
    # google-auth keeps naive UTC datetimes.
    if expiry is None:
        return None
    return expiry if expiry.tzinfo else expiry.replace(tzinfo=dt.UTC)


def mint(spec: RegistrySpec, info: dict[str, Any] | None) -> Credential:
    request = google.auth.transport.requests.Request()
    try:
        if info is not None:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=list(SCOPES)
            )
        else:
            credentials, _project = google.auth.default(scopes=list(SCOPES))
        credentials.refresh(request)
    except (ValueError, KeyError) as error:
        raise ReconcileError(
            Reason.INVALID_SECRET, f"the service-account key is unusable: {type(error).__name__}"
        ) from None
    except google.auth.exceptions.DefaultCredentialsError:
        raise ReconcileError(
            Reason.NO_CREDENTIALS, "the operator has no Google identity of its own (ADC not found)"
        ) from None
    except google.auth.exceptions.RefreshError as error:
        # The message carries the token endpoint's error code (e.g. invalid_grant), no secret.
        detail = str(error.args[0]) if error.args else "refused"
        transient = bool(getattr(error, "retryable", False))
        raise ReconcileError(
            Reason.PROVIDER_ERROR if transient else Reason.ACCESS_DENIED,
            f"Google refused to issue a token: {detail[:200]}",
            transient=transient,
        ) from None
    except google.auth.exceptions.TransportError:
        raise ReconcileError(
            Reason.PROVIDER_UNREACHABLE, "cannot reach Google's token endpoint", transient=True
        ) from None
    assert spec.server is not None
    return Credential(
        "gcp",
        (spec.server,),
        username=USERNAME,
        password=credentials.token,
        expires_at=_expiry(credentials.expiry),
    )


def resolve(spec: RegistrySpec, ctx: ResolveContext) -> Credential:
    found = _key_info(ctx, spec)
    if found is None:
        # The operator's own identity: only its cloud's registries may receive the token.
        check_ambient_destination("gcp", (spec.server or "",), ctx)
        # Safe: ambient needs no secret; check_ambient_allowed has let this object use the
        # operator's identity, and the trust domain keeps cluster and tenant mints apart.
        key = ctx.mint_key("gcp", "ambient", spec.server)
        return ctx.minted(key, lambda: mint(spec, None))
    info, key_bytes = found
    # Safe: the whole key file as stored (the private key in it), not client_email and
    # private_key_id, which are public; so only a holder of the same key shares the token.
    key = ctx.mint_key("gcp", "key", key_bytes, spec.server)
    return ctx.minted(key, lambda: mint(spec, info))
