"""A thin, synchronous OCI distribution (Docker registry v2) client."""

from ocireg.oci.auth import RegistryCredentials, parse_www_authenticate, parse_www_authenticate_all
from ocireg.oci.client import (
    RegistryClient,
    TLSOptions,
    VerifyResult,
    parse_link_next,
    parse_retry_after,
)
from ocireg.oci.errors import Reason, RegistryError

__all__ = [
    "Reason",
    "RegistryClient",
    "RegistryCredentials",
    "RegistryError",
    "TLSOptions",
    "VerifyResult",
    "parse_link_next",
    "parse_retry_after",
    "parse_www_authenticate",
    "parse_www_authenticate_all",
]
