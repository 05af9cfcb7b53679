"""kopf sees a rotate-now annotation change: its progress storage (under our ocireg.dev
prefix) clears that prefix from the essence it diffs, except the refresh annotation, whose
change fires the update handler (tests/e2e/test_refresh.py proves it end to end)."""

from __future__ import annotations

from typing import Any

from ocireg.api.names import ANNOTATION_REFRESH, GROUP
from ocireg.pullsecrets.handlers import ProgressStorage


def test_the_refresh_annotation_stays_in_the_essence_kopf_diffs() -> None:
    essence: Any = {
        "metadata": {
            "annotations": {
                f"{GROUP}/on_change": '{"started": "..."}',
                ANNOTATION_REFRESH: "2026-12-07T15:30:00Z",
                "reconcile.fluxcd.io/requestedAt": "x",
            }
        },
        "spec": {"server": "r"},
    }
    cleared: Any = ProgressStorage(prefix=GROUP).clear(essence=essence)
    assert cleared["metadata"]["annotations"] == {
        ANNOTATION_REFRESH: "2026-12-07T15:30:00Z",
        "reconcile.fluxcd.io/requestedAt": "x",
    }
    assert cleared["spec"] == {"server": "r"}
    bare: Any = {"spec": {}}
    assert "metadata" not in ProgressStorage(prefix=GROUP).clear(essence=bare)
