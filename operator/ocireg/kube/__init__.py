"""The one Kubernetes layer: the only importer of the kubernetes client."""
