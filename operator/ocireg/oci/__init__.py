"""A thin, synchronous OCI distribution (Docker registry v2) client.

client: the API operations (RegistryClient); transport: one request and its bounded answer;
auth: credentials, challenges and tokens; answers: HTTP refusals as RegistryError; errors:
RegistryError; listings: paged listings in bounded memory; headers and urls: parsing;
ca_bundle: reading a CA bundle from the cluster.
"""

from ocireg.api.reasons import Reason
from ocireg.oci.auth import RegistryCredentials, parse_www_authenticate, parse_www_authenticate_all
from ocireg.oci.client import RegistryClient, VerifyResult
from ocireg.oci.errors import RegistryError
from ocireg.oci.headers import parse_link_next, parse_retry_after
from ocireg.oci.transport import TLSOptions

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
