"""What `ocireg run` imports before kopf starts: only what the running operator uses.

Each case runs bench/import_cost.py's start path in a fresh interpreter (imports are process
state): the real ``ocireg.cli.main(["run", ...])`` with kopf.run replaced by the client login
it does first (docs/performance.md, "What the imports cost").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_cost", ROOT / "bench" / "import_cost.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start(*args: str, mode: str = "pod") -> dict[str, Any]:
    bench = _bench()
    result: dict[str, Any] = bench.start(1, ROOT / "operator", mode, list(args))
    assert result["code"] == 0
    return result


def test_the_webhook_server_is_imported_only_for_the_webhook() -> None:
    assert "ocireg.admission.server" not in _start()["loaded"]
    assert "ocireg.admission.server" in _start("--admission-webhook")["loaded"]


def test_in_a_pod_none_of_the_clients_kubeconfig_or_stream_code_is_imported() -> None:
    # kube/lazy.py: the client's package __init__ files never run on this path.
    assert _start()["loaded"] == []


def test_with_a_kubeconfig_only_the_kubeconfig_code_is_added() -> None:
    loaded = set(_start(mode="kubeconfig")["loaded"])
    assert "kubernetes.config.kube_config" in loaded
    assert not loaded & {"websocket", "kubernetes.dynamic", "kubernetes.stream"}
    assert "ocireg.admission.server" not in loaded


def test_cryptography_is_imported_only_to_make_the_webhooks_own_certificate() -> None:
    given = ("--admission-cert-file", "/tls/tls.crt", "--admission-key-file", "/tls/tls.key")
    assert "cryptography" not in _start("--admission-webhook", *given)["loaded"]
