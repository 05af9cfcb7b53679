"""kopf wiring only: settings, watches, timers. Decisions live in plan, I/O in kube."""

from __future__ import annotations

from typing import Any

import kopf

GROUP = "ocireg.dev"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own annotation and finalizer names, so nothing of ours looks like another operator's.
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Re-establish watches well before typical load-balancer idle timeouts close them.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.posting.level = 20  # INFO and above become Events
