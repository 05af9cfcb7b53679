"""Pods on the kubelet tier's node, and what a user sees of their image pulls."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.node import LocalNode

from .helpers import wait_for

PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff")
# Generous: a pull from loopback takes under a second; the kubelet's first retry after a
# failed pull comes 10 s later, the next 20 s after that.
PULL_TIMEOUT = 90


def run_pod(
    cluster: ControlPlane,
    node: LocalNode,
    namespace: str,
    image: str,
    service_account: str | None = None,
    pull_secrets: tuple[str, ...] = (),
) -> str:
    """Create a fresh pod (a new name each time: the kubelet's event filter drops repeats)
    on the node, pulling ``image`` every time; return its name."""
    name = f"pod-{secrets.token_hex(4)}"
    spec: dict = {
        "nodeName": node.name,  # no scheduler runs here
        "hostNetwork": True,  # the node's CNI network is loopback only
        # Nothing in it talks to the API; no token volume to mount and clean up.
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "app", "image": image, "imagePullPolicy": "Always"}],
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(body))
    return name


@dataclass
class PullOutcome:
    state: str  # "Running", or the waiting reason: ErrImagePull / ImagePullBackOff
    failure: str  # the kubelet's Failed event for the pull, "" when it pulled

    @property
    def running(self) -> bool:
        return self.state == "Running"


def _pull_failure_message(cluster: ControlPlane, namespace: str, pod: str) -> str:
    events = cluster.get_json(
        "events", "-n", namespace, "--field-selector", f"involvedObject.name={pod}"
    )["items"]
    return "\n".join(
        e["message"]
        for e in events
        if e["reason"] == "Failed" and e["message"].startswith("Failed to pull image")
    )


def pull_outcome(
    cluster: ControlPlane, namespace: str, pod: str, timeout: float = PULL_TIMEOUT
) -> PullOutcome:
    """Wait until the pod's container runs or its image pull has failed (with the kubelet's
    Failed event posted), and say which."""

    def settled() -> PullOutcome | None:
        body = cluster.get_json("pod", pod, "-n", namespace)
        for status in (body.get("status") or {}).get("containerStatuses") or []:
            state = status.get("state") or {}
            if "running" in state:
                return PullOutcome("Running", "")
            reason = (state.get("waiting") or {}).get("reason", "")
            if reason in PULL_FAILURES:
                message = _pull_failure_message(cluster, namespace, pod)
                return PullOutcome(reason, message) if message else None
        return None

    return wait_for(settled, timeout, f"pod {namespace}/{pod} to run or fail to pull")


def pod_pull_secrets(cluster: ControlPlane, namespace: str, pod: str) -> list[str]:
    body = cluster.get_json("pod", pod, "-n", namespace)
    return [r["name"] for r in body["spec"].get("imagePullSecrets") or []]


def assert_runs(cluster: ControlPlane, namespace: str, pod: str) -> None:
    outcome = pull_outcome(cluster, namespace, pod)
    assert outcome.running, f"{pod}: {outcome.state}: {outcome.failure}"


def assert_denied(cluster: ControlPlane, namespace: str, pod: str, because: str) -> str:
    """The pull failed, the pod shows ErrImagePull/ImagePullBackOff and the kubelet's event
    says ``because`` (e.g. "401 Unauthorized"); returns the event's message."""
    outcome = pull_outcome(cluster, namespace, pod)
    assert outcome.state in PULL_FAILURES, f"{pod} pulled, but should not have"
    assert because in outcome.failure, outcome.failure
    return outcome.failure
