"""A thin, synchronous OCI distribution (Docker registry v2) client."""

from ocireg.registry.auth import RegistryCredentials, parse_www_authenticate, parse_www_authenticate_all
from ocireg.registry.client import RegistryClient, TLSOptions, VerifyResult, parse_link_next, parse_retry_after
from ocireg.registry.errors import Reason, RegistryError

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
