"""Who may talk to the admission webhook (issue 14, point 9d), on the real control plane: the
API server's own AdmissionReviews for ServiceAccount creations are served (the pull secret is
in the account's first version), while a caller that reaches the port directly with anything
else (another kind, another operation, an oversized body) gets 400 or 413 and the handler
never runs. The API server cannot authenticate itself to a webhook without an admission
kubeconfig, so the port itself is the boundary: docs/admission.md and the NetworkPolicy."""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Callable

import requests

from ocireg.devenv.operator import OperatorProcess

from .test_admission import Setup, _refs, _start, setup  # noqa: F401 - the fixture

LIMIT = 256 * 1024


def _review(namespace: str, kind: str = "ServiceAccount", operation: str = "CREATE") -> dict:
    resource = {"ServiceAccount": "serviceaccounts", "Pod": "pods"}[kind]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "5d1b1a53-3c2f-4a7e-9d51-2f5a3c1b0e77",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "mallory"},
            "object": {"apiVersion": "v1", "kind": kind, "metadata": {"name": "x"}},
        },
    }


def test_only_service_account_creations_are_answered(
    setup: Setup,  # noqa: F811 - the fixture imported above
    run_operator: Callable[..., OperatorProcess],
) -> None:
    operator = _start(setup, run_operator)
    entry = setup.webhook()
    assert entry is not None
    url = entry["clientConfig"]["url"]
    selected = setup.namespace(selected=True)
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as ca:
        ca.write(base64.b64decode(entry["clientConfig"]["caBundle"]))
        ca.flush()

        def post(body: bytes) -> requests.Response:
            return requests.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                verify=ca.name,
                timeout=10,
            )

        refused = {
            "a Pod": _review(selected, kind="Pod"),
            "an UPDATE": _review(selected, operation="UPDATE"),
            "v1beta1": {**_review(selected), "apiVersion": "admission.k8s.io/v1beta1"},
        }
        for label, body in refused.items():
            answer = post(json.dumps(body).encode())
            assert answer.status_code == 400, (label, answer.status_code, answer.text)
            assert setup.pull not in answer.text
        big = _review(selected)
        big["request"]["object"]["metadata"]["annotations"] = {"pad": "x" * LIMIT}
        assert post(json.dumps(big).encode()).status_code == 413
        # The one shape that is served: what the API server sends. An unauthenticated
        # caller learns the pull secret names a namespace and account would get (documented).
        answer = post(json.dumps(_review(selected)).encode())
        assert answer.status_code == 200
        assert answer.json()["response"]["allowed"] is True

    # The API server's own requests still get through the checks.
    builder = setup.create_account(setup.namespace(selected=True), "builder")
    assert _refs(builder) == [setup.pull]
    logs = operator.logs()
    assert logs.count("admission: refused a request") >= 3
    assert "admitted unchanged" not in logs
