"""What the operator keeps per registry object and per connection through kopf: kopf's own
HTTP session has a bounded connection pool (kopf's unbounded one kept one TLS connection,
with asyncio's 256 KiB read buffer, per handler that ran at the same time), and the copy of
each object kept for runs outside a handler holds only what those runs read."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
from kubernetes.config import kube_config

from ocireg.pullsecrets import handlers
from ocireg.settings import OperatorConfig


def test_kopf_logs_in_as_before_with_at_most_api_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": "https://127.0.0.1:6443",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "file-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    before = kubernetes.client.Configuration.get_default_copy()

    async def login() -> tuple[str, int, str]:
        context = await handlers.login(
            memo=kopf.Memo(config=OperatorConfig()),
            logger=logging.getLogger("test"),
            settings=kopf.OperatorSettings(),
        )
        assert isinstance(context, kopf.AiohttpSession)
        session = context.aiohttp_session
        try:
            assert session.connector is not None
            return context.server, session.connector.limit, session.headers["Authorization"]
        finally:
            await session.close()

    try:
        server, limit, authorization = asyncio.run(login())
    finally:
        kubernetes.client.Configuration.set_default(before)
    assert server == "https://127.0.0.1:6443"
    assert authorization == "Bearer file-token"
    # The two kinds' watches and kopf's two observers hold one each; the rest are requests'.
    assert limit == handlers.API_CONNECTIONS + 4


def test_every_watch_kopf_may_hold_has_a_connection_besides_the_requests() -> None:
    served = tuple(f"team-{i}" for i in range(30))
    assert handlers.connection_limit(served) == handlers.API_CONNECTIONS + 2 * 30 + 2
    assert handlers.connection_limit(("team-*",)) == 0  # as many watches as namespaces match


def _body() -> dict[str, Any]:
    return {
        "apiVersion": "ocireg.dev/v1alpha1",
        "kind": "OCIRegistry",
        "metadata": {
            "name": "reg",
            "namespace": "team-a",
            "uid": "1234",
            "generation": 3,
            "resourceVersion": "99",
            "finalizers": ["ocireg.dev/cleanup"],
            "annotations": {"ocireg.dev/last-handled-configuration": '{"spec": {}}'},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:server": {}}}}],
        },
        "spec": {"server": "registry.example", "auth": {"basic": {"secretRef": {"name": "x"}}}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_the_copy_kept_for_runs_outside_a_handler_holds_what_they_read_only() -> None:
    raw = _body()
    kept = handlers.kept(kopf.Body(raw))
    assert kept == {
        "apiVersion": "ocireg.dev/v1alpha1",
        "kind": "OCIRegistry",
        "metadata": {"name": "reg", "namespace": "team-a", "uid": "1234", "generation": 3},
        "spec": raw["spec"],
        "status": raw["status"],
    }
    raw["spec"]["auth"]["basic"]["secretRef"]["name"] = "changed"  # kopf edits in place
    assert kept["spec"]["auth"]["basic"]["secretRef"]["name"] == "x"


def test_the_kept_copy_holds_the_rotate_now_requests_a_run_reads() -> None:
    """reconcile reads the refresh annotations from the body it is handed (a request and
    whether it was handled: schedule.refresh_requests); the kept copy must carry them."""
    raw = _body()
    raw["metadata"]["annotations"].update(
        {
            "ocireg.dev/refresh-requested-at": "2026-12-07T16:00:00Z",
            "reconcile.fluxcd.io/requestedAt": "now",
            "example.com/other": "not kept",
        }
    )
    assert handlers.kept(kopf.Body(raw))["metadata"]["annotations"] == {
        "ocireg.dev/refresh-requested-at": "2026-12-07T16:00:00Z",
        "reconcile.fluxcd.io/requestedAt": "now",
    }
