"""Where the metrics endpoint listens (issue 14, point 9e): on loopback unless told, so a
process started by hand (or a manifest that forgets the address) does not serve every
address; the chart passes the pod's IP (tests/e2e/test_install_network.py)."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from ocireg import metrics
from ocireg.cli import build_parser, config_from_args
from ocireg.settings import OperatorConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_metrics_address_defaults_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCIREG_METRICS_ADDRESS", raising=False)
    config = config_from_args(build_parser().parse_args(["run", "--metrics-port", "9090"]))
    assert config.metrics_address == "127.0.0.1"
    assert OperatorConfig().metrics_address == "127.0.0.1"
    monkeypatch.setenv("OCIREG_METRICS_ADDRESS", "10.1.2.3")  # the chart's pod IP
    config = config_from_args(build_parser().parse_args(["run", "--metrics-port", "9090"]))
    assert config.metrics_address == "10.1.2.3"
    monkeypatch.setenv("OCIREG_METRICS_ADDRESS", "")  # set but empty: still loopback
    config = config_from_args(build_parser().parse_args(["run", "--metrics-port", "9090"]))
    assert config.metrics_address == "127.0.0.1"


def test_serving_without_an_address_binds_loopback_only() -> None:
    port = _free_port()
    server, thread = metrics.serve(port)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert b"ocireg_" in answer.read()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
