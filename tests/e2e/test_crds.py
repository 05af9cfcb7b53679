"""The generated CRDs on the real API server: bad objects are rejected at apply time with a
message saying what to fix; good ones are stored with defaults; kubectl explain helps."""

from __future__ import annotations

import pytest
import yaml

from ocireg_devenv.controlplane import ControlPlane

BASIC = {"basic": {"secretRef": {"name": "creds"}}}


def _apply(cluster: ControlPlane, kind: str, spec: dict, namespace: str | None = None):
    metadata = {"name": "sample"} | ({"namespace": namespace} if namespace else {})
    obj = {"apiVersion": "ocireg.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}
    return cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj), check=False)


# Each case: the kind, the spec, and a piece of the message the user sees.
REJECTED = {
    "scheme-in-server": (
        "OCIRegistry",
        {"server": "https://ghcr.io", "auth": BASIC},
        "server is host[:port] without a scheme",
    ),
    "path-in-server": (
        "OCIRegistry",
        {"server": "ghcr.io/org", "auth": BASIC},
        "spec.server in body should match",
    ),
    "no-server": ("OCIRegistry", {"auth": BASIC}, "set server (or extends)"),
    "no-auth": ("OCIRegistry", {"server": "ghcr.io"}, "set auth (or extends)"),
    "two-auth-methods": (
        "OCIRegistry",
        {"server": "ghcr.io", "auth": {**BASIC, "anonymous": {}}},
        "set exactly one auth method",
    ),
    "no-auth-method": (
        "OCIRegistry",
        {"server": "ghcr.io", "auth": {}},
        "set exactly one auth method",
    ),
    "namespaced-targets-namespaces": (
        "OCIRegistry",
        {"server": "ghcr.io", "auth": BASIC, "targets": {"namespaces": ["a"]}},
        "namespaces is only allowed on ClusterOCIRegistry",
    ),
    "namespaced-selector": (
        "OCIRegistry",
        {"server": "ghcr.io", "auth": BASIC, "targets": {"namespaceSelector": {}}},
        "namespaceSelector is only allowed on ClusterOCIRegistry",
    ),
    "namespaced-secret-namespace": (
        "OCIRegistry",
        {"server": "ghcr.io", "auth": {"basic": {"secretRef": {"name": "c", "namespace": "x"}}}},
        "namespace is only allowed on ClusterOCIRegistry",
    ),
    "bad-duration": (
        "OCIRegistry",
        {"server": "ghcr.io", "auth": BASIC, "refresh": {"interval": "1 day"}},
        "spec.refresh.interval in body should match",
    ),
    "too-short-interval": (
        "OCIRegistry",
        {"server": "ghcr.io", "auth": BASIC, "refresh": {"interval": "5s"}},
        "interval must be at least 30s",
    ),
    "bad-percentage": (
        "OCIRegistry",
        {"server": "ghcr.io", "auth": BASIC, "refresh": {"renewBefore": "120%"}},
        "spec.refresh.renewBefore in body should match",
    ),
    "unknown-format": (
        "OCIRegistry",
        {"server": "ghcr.io", "auth": BASIC, "targets": {"formats": ["yaml"]}},
        'Unsupported value: "yaml"',
    ),
    "insecure-with-ca": (
        "OCIRegistry",
        {
            "server": "ghcr.io",
            "auth": BASIC,
            "tls": {"insecure": True, "caBundleRef": {"configMap": "ca"}},
        },
        "caBundleRef has no effect with insecure",
    ),
    "ca-from-two-places": (
        "ClusterOCIRegistry",
        {
            "server": "ghcr.io",
            "auth": BASIC,
            "tls": {"caBundleRef": {"configMap": "ca", "secret": "ca"}},
        },
        "set exactly one of configMap or secret",
    ),
    "unknown-field": (
        "ClusterOCIRegistry",
        {"server": "ghcr.io", "auth": BASIC, "sever": "x"},
        'unknown field "spec.sever"',
    ),
    "tenant-ecr-without-credentials": (
        "OCIRegistry",
        {"server": "1.dkr.ecr.eu-west-1.amazonaws.com", "auth": {"ecr": {}}},
        "only a ClusterOCIRegistry may use the operator's own cloud identity",
    ),
    "tenant-gcp-without-credentials": (
        "OCIRegistry",
        {"server": "europe-docker.pkg.dev", "auth": {"gcp": {}}},
        "must set credentials",
    ),
    "tenant-other-namespaces-service-account": (
        "OCIRegistry",
        {
            "server": "r.example.com",
            "auth": {
                "ecr": {
                    "roleArn": "arn:aws:iam::123456789012:role/x",
                    "credentials": {"serviceAccountRef": {"name": "sa", "namespace": "other"}},
                }
            },
        },
        "namespace is only allowed on ClusterOCIRegistry",
    ),
    "web-identity-without-role": (
        "ClusterOCIRegistry",
        {
            "server": "r.example.com",
            "auth": {"ecr": {"credentials": {"serviceAccountRef": {"name": "sa"}}}},
        },
        "serviceAccountRef needs roleArn",
    ),
    "two-aws-credential-sources": (
        "ClusterOCIRegistry",
        {
            "server": "r.example.com",
            "auth": {
                "ecr": {
                    "roleArn": "arn:aws:iam::123456789012:role/x",
                    "credentials": {"secretRef": {"name": "k"}, "serviceAccountRef": {"name": "s"}},
                }
            },
        },
        "set at most one of secretRef, serviceAccountRef",
    ),
    "plain-http-webhook": (
        "ClusterOCIRegistry",
        {"server": "r.example.com", "auth": {"webhook": {"url": "http://creds.example.com/x"}}},
        "the webhook url must be https://",
    ),
    "bad-ecr-region": (
        "ClusterOCIRegistry",
        {"server": "r.example.com", "auth": {"ecr": {"regions": ["Mars"]}}},
        "should match",
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_at_apply(cluster: ControlPlane, crds: None, namespace: str, case: str) -> None:
    kind, spec, message = REJECTED[case]
    result = _apply(cluster, kind, spec, namespace if kind == "OCIRegistry" else None)
    assert result.returncode != 0, f"{case} was accepted"
    assert message in result.stderr


def test_valid_objects_are_stored_with_defaults(
    cluster: ControlPlane, crds: None, namespace: str
) -> None:
    assert (
        _apply(cluster, "OCIRegistry", {"server": "ghcr.io", "auth": BASIC}, namespace).returncode
        == 0
    )
    stored = cluster.get_json("ociregistry", "sample", "-n", namespace)["spec"]
    assert stored["auth"]["basic"] == {
        "secretRef": {"name": "creds"},
        "usernameKey": "username",
        "passwordKey": "password",
    }
    cluster_spec = {
        "server": "123456789012.dkr.ecr.{region}.amazonaws.com",
        "auth": {"basic": {"secretRef": {"name": "creds", "namespace": "platform"}}},
        "targets": {
            "namespaceSelector": {"matchLabels": {"team": "a"}},
            "excludeNamespaces": ["kube-*"],
            "serviceAccounts": ["*"],
            "formats": ["dockerconfigjson", "env"],
        },
        "refresh": {"interval": "15m", "renewBefore": "2h"},
    }
    try:
        assert _apply(cluster, "ClusterOCIRegistry", cluster_spec).returncode == 0
        listed = cluster.kubectl("get", "ocireg", "-A").stdout  # category spans both kinds
        assert "ghcr.io" in listed
        assert "123456789012.dkr.ecr.{region}.amazonaws.com" in listed
        columns = cluster.kubectl("get", "cocir").stdout.splitlines()[0].split()
        assert columns == ["NAME", "SERVER", "AUTH", "READY", "EXPIRES", "AGE"]
    finally:
        cluster.kubectl("delete", "clusterociregistry", "sample", "--ignore-not-found")


def test_kubectl_explain_describes_fields(cluster: ControlPlane, crds: None) -> None:
    explained = cluster.kubectl("explain", "clusterociregistry.spec.targets.namespaces").stdout
    assert "by name or glob" in explained
