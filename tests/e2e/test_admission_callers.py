"""Who may talk to the admission webhook (issue 14, point 9d), on the real control plane: the
API server's own AdmissionReviews for ServiceAccount creations are served (the pull secret is
in the account's first version), while a caller that reaches the port directly with anything
else (another kind, another operation, an oversized body) gets 400 or 413 and the handler
never runs, and callers holding the port full of unfinished connections do not keep the API
server out. The API server cannot authenticate itself to a webhook without an admission
kubeconfig, so the port itself is the boundary: docs/admission.md and the NetworkPolicy."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import tempfile
import time
from collections.abc import Callable

import requests

from ocireg_devenv.operator import OperatorProcess

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


def _held(conn: ssl.SSLSocket) -> bool:
    """Whether the operator still keeps this connection open (without blocking)."""
    conn.setblocking(False)
    try:
        return not any(conn.recv(65536) == b"" for _ in range(100))
    except ssl.SSLWantReadError:
        return True
    except OSError:
        return False
    finally:
        conn.setblocking(True)


def test_a_port_full_of_slow_callers_still_serves_the_api_server(
    setup: Setup,  # noqa: F811 - the fixture imported above
    run_operator: Callable[..., OperatorProcess],
) -> None:
    """Pods on four addresses (127.0.0.2-5 here) open 40 connections to the webhook port and
    never finish a request's headers (review finding 4: each used to be held for good, ~0.6
    MiB apiece). The operator keeps at most 8 per address, 32 in all; the API server, calling
    from 127.0.0.1 into that full port, takes the place of one of them: the account it creates
    has the reference in its first version, within the webhook's timeout."""
    operator = _start(setup, run_operator)
    entry = setup.webhook()
    assert entry is not None
    url = entry["clientConfig"]["url"]
    port = int(url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    context = ssl.create_default_context(
        cadata=base64.b64decode(entry["clientConfig"]["caBundle"]).decode()
    )
    slow: list[ssl.SSLSocket] = []
    try:
        for peer in range(2, 6):
            for _ in range(10):
                raw = socket.create_connection(
                    ("127.0.0.1", port), timeout=5, source_address=(f"127.0.0.{peer}", 0)
                )
                try:
                    conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
                    conn.sendall(b"POST /pull-secrets HTTP/1.1\r\nHost: x\r\nContent-Le")
                except OSError:  # closed before TLS: past the address's share
                    raw.close()
                    continue
                slow.append(conn)
        held = sum(_held(c) for c in slow)
        assert held <= 32
        started = time.monotonic()
        builder = setup.create_account(setup.namespace(selected=True), "builder")
        took = time.monotonic() - started
        print(f"40 slow connections, {held} held; a ServiceAccount created in {took:.2f} s")
        assert _refs(builder) == [setup.pull]
        assert took < 2  # the webhook's timeoutSeconds in these tests
    finally:
        for conn in slow:
            conn.close()
    logs = operator.logs()
    assert "the webhook port is full" in logs
    assert "admitted unchanged" not in logs
