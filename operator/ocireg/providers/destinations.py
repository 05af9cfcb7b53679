"""Where a credential made from the operator's own (ambient) cloud identity may go.

An ambient token is the operator's, whoever asked for it: the Entra token of its managed
identity is POSTed to the registry's /oauth2/exchange, a GCP access token and an ECR
password are sent to the registry as its password (by the operator's verification, then by
every kubelet). So the registry named by the object must be one its cloud runs, whatever the
object's kind: ACR login servers for Azure, Google's registry hosts for GCP, ECR endpoints for
AWS; the operator can replace each list (sovereign or private endpoints, test stand-ins).
And the channel must be one only that host can read: never plain HTTP or unverified TLS, and
for a tenant's object no CA of the tenant's choosing (it could vouch for any host).

Pure decisions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# A pattern is a host name; "*" stands for exactly one DNS label, so "*.azurecr.io" matches
# "corp.azurecr.io" but not "evil.example.azurecr.io" nor "azurecr.io". (A "*" that crossed
# dots would let "*.dkr.ecr.*.amazonaws.com" match an S3 bucket's virtual host.)
DEFAULT_HOSTS: Mapping[str, tuple[str, ...]] = {
    "acr": ("*.azurecr.io", "*.azurecr.cn", "*.azurecr.us"),
    "gcp": ("gcr.io", "*.gcr.io", "*.pkg.dev"),
    "ecr": (
        "*.dkr.ecr.*.amazonaws.com",
        "*.dkr.ecr.*.amazonaws.com.cn",
        "*.dkr.ecr-fips.*.amazonaws.com",
        "*.dkr-ecr.*.on.aws",
        "*.dkr-ecr-fips.*.on.aws",
        "public.ecr.aws",
    ),
}
CLOUD_NAMES = {"acr": "Azure's", "gcp": "Google's", "ecr": "AWS's"}
FLAGS = {"acr": "--ambient-acr-host", "gcp": "--ambient-gcp-host", "ecr": "--ambient-ecr-host"}


# host[:port] and nothing else: no userinfo ("@"), path or query could move the request elsewhere
# after the check (the CRD pattern refuses them too; this does not rely on it).
_SERVER = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::[0-9]{1,5})?")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def hostname(server: str) -> str:
    """The host of ``host[:port]`` (IPv6 in brackets), lower case, without a final dot;
    "" for anything else, which no pattern matches."""
    found = _SERVER.fullmatch(server)
    if found is None:
        return ""
    return (found["v6"] or found["name"]).lower().removesuffix(".")


def host_matches(host: str, pattern: str) -> bool:
    """Whether ``host`` is named by ``pattern`` (label by label; "*" is one whole DNS label)."""
    if not host:
        return False
    labels = host.split(".")
    wanted = pattern.lower().removesuffix(".").split(".")
    if len(labels) != len(wanted):
        return False
    return all(
        (want == "*" and _LABEL.fullmatch(label) is not None) or want == label
        for label, want in zip(labels, wanted, strict=True)
    )


def ambient_refusal(
    cloud: str,
    servers: Iterable[str],
    allowed_hosts: Iterable[str],
    *,
    insecure: bool,
    skip_verify: bool,
    custom_ca: bool,
    namespaced: bool,
) -> str | None:
    """Why a credential from the operator's own ``cloud`` identity may not be sent to
    ``servers`` over this TLS (None: it may). ``allowed_hosts`` empty: the cloud's own."""
    patterns = tuple(allowed_hosts) or DEFAULT_HOSTS[cloud]
    for server in servers:
        host = hostname(server)
        if not any(host_matches(host, pattern) for pattern in patterns):
            return (
                f"{host or server} is not one of {CLOUD_NAMES[cloud]} registry hosts "
                f"({', '.join(patterns)}): the operator's own identity is only sent to its "
                f"cloud's registries (the operator can change the list with {FLAGS[cloud]})"
            )
    if insecure or skip_verify:
        what = "plain HTTP" if insecure else "TLS without verification"
        return (
            f"the operator's own identity is never sent over {what}: remove "
            f"tls.{'insecure' if insecure else 'insecureSkipVerify'}"
        )
    if custom_ca and namespaced:
        return (
            "an OCIRegistry using the operator's own identity cannot set tls.caBundleRef: "
            "a CA of its own could vouch for any host"
        )
    return None
