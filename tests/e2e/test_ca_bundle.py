"""A CA bundle that cannot be used, on the real control plane (issue 14, point 9 a-b): the CA
in DER form (binary, not PEM text) and a CA ConfigMap that does not exist yet are each a
Stalled condition with a named reason and a Warning Event, a pull secret written before is
kept byte for byte, no exception reaches kopf, and creating the ConfigMap is picked up."""

from __future__ import annotations

import base64
import json

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    ca_config_map,
    condition,
    events_for,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
)

KIND = "OCIRegistry"


def test_unusable_ca_bundles_are_stalled_conditions_and_keep_the_secret(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    basic = registries.basic
    der = x509.load_pem_x509_certificate(registries.ca_file.read_bytes()).public_bytes(Encoding.DER)
    apply(
        cluster,
        ca_config_map(namespace, registries.ca_file),
        secret_object("login", namespace, username=basic.username, password=basic.password),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "der-ca", "namespace": namespace},
            "data": {"ca.crt": base64.b64encode(der).decode()},
        },
    )
    operator = run_operator(*ALLOW_LOCAL_REGISTRIES)

    def spec(ca: dict) -> dict:
        return {
            "server": basic.host,
            "auth": {"basic": {"secretRef": {"name": "login"}}},
            "tls": {"caBundleRef": ca},
        }

    apply(
        cluster,
        registry_object(KIND, "was-good", spec({"configMap": "registry-ca"}), namespace),
        registry_object(KIND, "der", spec({"secret": "der-ca"}), namespace),
        registry_object(KIND, "later", spec({"configMap": "created-later"}), namespace),
    )
    wait_for_reason(cluster, KIND, "was-good", "Ready", namespace)
    written = wait_for(lambda: secret(cluster, namespace, "was-good"), 30, "the pull secret")

    # The same registry object now points at the DER copy of its CA.
    apply(cluster, registry_object(KIND, "was-good", spec({"secret": "der-ca"}), namespace))
    expected = {
        "der": ("InvalidCABundle", f"Secret {namespace}/der-ca key 'ca.crt' is not text"),
        "was-good": ("InvalidCABundle", f"Secret {namespace}/der-ca key 'ca.crt' is not text"),
        "later": ("ConfigMapNotFound", f"ConfigMap {namespace}/created-later does not exist"),
    }
    for name, (reason, message) in expected.items():
        ready = wait_for_reason(cluster, KIND, name, reason, namespace)
        assert ready["status"] == "False"
        assert ready["message"].startswith(message), ready["message"]
        stalled = condition(cluster, KIND, name, "Stalled", namespace)
        assert (stalled["status"], stalled["reason"]) == ("True", reason), name
        assert condition(cluster, KIND, name, "Reconciling", namespace) == {}  # only while True
        wait_for(
            lambda n=name, r=reason: [
                e for e in events_for(cluster, n) if (e["type"], e["reason"]) == ("Warning", r)
            ],
            20,
            f"a Warning Event {reason} for {name}",
        )
    kept = secret(cluster, namespace, "was-good")
    assert kept is not None
    assert kept["data"] == written["data"]
    assert kept["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
    assert secret(cluster, namespace, "der") is None

    # The ConfigMap appearing is noticed (Stalled still retries, with backoff).
    apply(cluster, ca_config_map(namespace, registries.ca_file, name="created-later"))
    wait_for_reason(cluster, KIND, "later", "Ready", namespace, timeout=90)

    logs = operator.logs()
    assert "Traceback" not in logs
    assert "UnicodeDecodeError" not in logs
    assert basic.password not in json.dumps([events_for(cluster, n) for n in expected]) + logs
