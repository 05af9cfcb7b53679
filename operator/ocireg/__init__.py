"""ocireg: a Kubernetes operator for OCI registry credentials and pull secrets."""

__version__ = "0.1.0"
