"""`ocireg status`'s table and `ocireg check --local`'s reading of files, without a cluster
(tests/e2e/test_console.py runs the real commands)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ocireg import console
from ocireg.api.errors import ReconcileError

NOW = dt.datetime(2026, 12, 7, 15, 0, tzinfo=dt.UTC)


def test_status_row_of_a_ready_expiring_object() -> None:
    body = {
        "metadata": {"name": "ecr", "namespace": "team-a"},
        "status": {
            "conditions": [
                {"type": "Stalled", "status": "False", "reason": "Progressing"},
                {"type": "Ready", "status": "True", "reason": "Ready"},
            ],
            "credentials": {
                "expiresAt": "2026-12-07T18:20:00Z",
                "refreshedAt": "2026-12-07T14:55:00Z",
            },
            "targets": {"failedCount": 2},
        },
    }
    body["status"]["failures"] = 3
    assert console.status_row("OCIRegistry", body, NOW) == (
        "OCIRegistry",
        "team-a/ecr",
        "True",
        "Ready",
        "in 3h20m",
        "3",
        "2",
        "5m ago",
    )


def test_status_row_of_an_object_never_reconciled_or_expired() -> None:
    assert console.status_row("ClusterOCIRegistry", {"metadata": {"name": "x"}}, NOW) == (
        "ClusterOCIRegistry",
        "x",
        "Unknown",
        "NotReconciled",
        "-",
        "0",
        "0",
        "-",
    )
    expired = {
        "metadata": {"name": "y"},
        "status": {"credentials": {"expiresAt": "2026-12-07T14:00:00Z"}},
    }
    assert console.status_row("ClusterOCIRegistry", expired, NOW)[4] == "expired 1h ago"


def test_table_aligns_columns() -> None:
    assert console.table([("A", "BB"), ("ccc", "d")]) == "A     BB\nccc   d\n"


def test_local_objects_read_as_the_api_would(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(
        """
apiVersion: v1
kind: Secret
metadata: {name: login}
stringData: {username: robot}
data: {password: czNjcmV0}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ca, namespace: other}
  data: {ca.crt: PEM}
"""
    )
    objects = console.LocalObjects(console._documents([str(path)]), "team-a")
    assert objects.read_secret("team-a", "login") == {"username": b"robot", "password": b"s3cret"}
    assert objects.read_config_map("other", "ca") == {"ca.crt": b"PEM"}
    assert objects.read_config_map("team-a", "ca") is None
    with pytest.raises(ReconcileError) as missing:
        objects.read_secret("other", "login")
    assert missing.value.reason == "SecretNotFound"


def test_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(console.CommandError, match=r"bad.yaml: "):
        console._documents([str(bad)])
    with pytest.raises(console.CommandError, match="No such file"):
        console._documents([str(tmp_path / "absent.yaml")])
