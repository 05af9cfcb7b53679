"""Propagation and scale benchmark on the real local control plane.

    .venv/bin/python bench/scale_bench.py [--namespaces 1000] [--registries 10] [--samples 50]
                                          [--concurrency 16] [--json bench/scale.json]

What it measures (one run, one table, the same figures as JSON):
  P1  new namespace -> every selecting registry's pull secret present and the `default`
      ServiceAccount referencing them all: p50 / p99 / max, with N namespaces present;
  P2  rotating one registry's credentials across N namespaces, against the floor: a plain
      client replacing the same N Secrets with the same concurrency, in the same run (ratio);
  P3  Secret writes during several resync periods with nothing changed, and mints per identity
      (one registry's credentials come from a webhook, so mints are counted at the stand-in);
  P4  operator RSS with N namespaces x R registries;
  P6  operator restart -> converged (every object Ready again), and the writes it made.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import requests
import yaml
from kubernetes.client.exceptions import ApiException

from ocireg.api.crd import crd_files
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.processes import Tools, free_port
from ocireg_devenv.registries import LocalRegistries
from ocireg_devenv.standins import WebhookStandIn

CREDS_NS = "ocireg-system"
LABEL = {"ocireg-bench": "yes"}
RESYNC = 20.0  # the operator's drift-repair period in this run (default 300 s)


def _wait(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _metric(port: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS), or the peak so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="ocireg-bench-"))
        self.tools = Tools.locate()
        self.cluster = ControlPlane(self.workdir / "cluster", self.tools)
        self.registries = LocalRegistries(self.workdir / "registries", self.tools)
        self.results: dict[str, Any] = {}
        self.operator: OperatorProcess | None = None
        self.hook: WebhookStandIn | None = None
        self.metrics_port = free_port()
        # With --admission the operator also serves the ServiceAccount admission webhook (the
        # API server calls it for every ServiceAccount created), to measure its memory too.
        self.admission_args: tuple[str, ...] = ()
        if args.admission:
            self.admission_args = (
                "--admission-webhook",
                "--admission-address", "127.0.0.1",
                "--admission-port", str(free_port()),
                "--admission-configuration", "ocireg-bench",
            )  # fmt: skip

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        self.cluster.start()
        self.registries.start(("basic",))
        client = kubernetes.config.new_client_from_config(str(self.cluster.admin_kubeconfig))
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        (self.workdir / "crds").mkdir()
        for name, text in crd_files().items():
            (self.workdir / "crds" / name).write_text(text)
        self.cluster.kubectl("apply", "-f", str(self.workdir / "crds"))
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/clusterociregistries.ocireg.dev",
        )  # fmt: skip
        basic = self.registries.basic
        self.core.create_namespace({"metadata": {"name": CREDS_NS}})
        for index in range(self.args.registries):  # one login per registry: P2 rotates one
            self.core.create_namespaced_secret(
                CREDS_NS,
                {
                    "metadata": {"name": f"login-{index}"},
                    "stringData": {"username": basic.username, "password": basic.password},
                },
            )
        self.core.create_namespaced_config_map(
            CREDS_NS,
            {"metadata": {"name": "ca"}, "data": {"ca.crt": self.registries.ca_file.read_text()}},
        )
        self.hook = WebhookStandIn(
            lambda user, password: self.registries.set_user("basic", user, password),
            header=("X-Key", "bench"),
            lifetime=None,
        ).start()
        self.core.create_namespaced_secret(
            CREDS_NS, {"metadata": {"name": "hook"}, "stringData": {"X-Key": "bench"}}
        )

    def create_namespaces(self, names: list[str]) -> float:
        started = time.monotonic()
        body = lambda n: {"metadata": {"name": n, "labels": LABEL}}  # noqa: E731
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            list(pool.map(lambda n: self.core.create_namespace(body(n)), names))
        return time.monotonic() - started

    def start_operator(self) -> float:
        started = time.monotonic()
        self.operator = OperatorProcess(
            self.cluster.admin_kubeconfig,
            self.workdir,
            (
                "--credentials-namespace", CREDS_NS,
                "--concurrency", str(self.args.concurrency),
                "--resync", str(RESYNC),
                "--metrics-port", str(self.metrics_port),
                "--metrics-address", "127.0.0.1",
                *self.admission_args,
            ),
            name=f"ocireg-{int(started)}",
            verbose=False,  # at this scale a verbose log would measure logging
        )  # fmt: skip
        self.operator.start()
        return time.monotonic() - started

    def registry_spec(self, index: int) -> dict[str, Any]:
        basic = self.registries.basic
        auth: dict[str, Any] = {"basic": {"secretRef": {"name": f"login-{index}"}}}
        if index == self.args.registries - 1:  # the minting identity
            assert self.hook is not None
            auth = {
                "webhook": {
                    "url": f"{self.hook.url}/creds",
                    "insecure": True,
                    "headersSecretRef": {"name": "hook"},
                }
            }
        return {
            "apiVersion": "ocireg.dev/v1alpha1",
            "kind": "ClusterOCIRegistry",
            "metadata": {"name": f"reg-{index}"},
            "spec": {
                "server": basic.host,
                "auth": auth,
                "tls": {"caBundleRef": {"configMap": "ca"}},
                "targets": {
                    "secretName": f"reg-{index}",
                    "namespaceSelector": {"matchLabels": LABEL},
                },
            },
        }

    def ready_count(self) -> int:
        items = self.custom.list_cluster_custom_object(
            "ocireg.dev", "v1alpha1", "clusterociregistries"
        )["items"]
        return sum(
            1
            for item in items
            for c in (item.get("status") or {}).get("conditions") or []
            if c["type"] == "Ready"
            and c["status"] == "True"
            and c.get("observedGeneration") == item["metadata"]["generation"]
        )

    def managed_count(self) -> int:
        return len(
            self.core.list_secret_for_all_namespaces(
                label_selector="app.kubernetes.io/managed-by=ocireg"
            ).items
        )

    # ------------------------------------------------------------------ measurements

    def converge(self) -> float:
        started = time.monotonic()
        for index in range(self.args.registries):
            self.custom.create_cluster_custom_object(
                "ocireg.dev", "v1alpha1", "clusterociregistries", self.registry_spec(index)
            )
        expected = self.args.namespaces * self.args.registries
        _wait(lambda: self.managed_count() >= expected, 1800, f"{expected} pull secrets", 2)
        _wait(lambda: self.ready_count() == self.args.registries, 300, "every registry Ready", 1)
        return time.monotonic() - started

    def p1_new_namespace(self) -> dict[str, float]:
        samples = []
        wanted = {f"reg-{i}" for i in range(self.args.registries)}
        for i in range(self.args.samples):
            name = f"late-{i}"
            started = time.monotonic()
            self.core.create_namespace({"metadata": {"name": name, "labels": LABEL}})

            def done(ns: str = name) -> bool:
                secrets = {
                    s.metadata.name
                    for s in self.core.list_namespaced_secret(
                        ns, label_selector="app.kubernetes.io/managed-by=ocireg"
                    ).items
                }
                if secrets != wanted:
                    return False
                try:
                    sa = self.core.read_namespaced_service_account("default", ns)
                except ApiException:
                    return False
                return {r.name for r in sa.image_pull_secrets or []} >= wanted

            _wait(done, 120, f"namespace {name} served", every=0.02)
            samples.append(time.monotonic() - started)
        return {
            "p50_s": statistics.median(samples),
            "p99_s": _quantile(samples, 0.99),
            "max_s": max(samples),
            "samples": len(samples),
        }

    def p2_rotation(self) -> dict[str, float]:
        # The floor: a plain client replacing the same number of Secrets, same concurrency.
        floor_names = [f"bench-{i}" for i in range(self.args.namespaces)]
        payload = base64.b64encode(b'{"auths":{}}').decode()

        def plain_write(ns: str) -> None:
            self.core.create_namespaced_secret(
                ns,
                {
                    "metadata": {"name": "floor"},
                    "type": "kubernetes.io/dockerconfigjson",
                    "data": {".dockerconfigjson": payload},
                },
            )

        started = time.monotonic()
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            list(pool.map(plain_write, floor_names))
        floor_create = time.monotonic() - started

        def plain_replace(ns: str) -> None:
            body = {
                "metadata": {"name": "floor"},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": base64.b64encode(b'{"auths":{"x":{}}}').decode()},
            }
            current = self.core.read_namespaced_secret("floor", ns)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            self.core.replace_namespaced_secret("floor", ns, body)

        started = time.monotonic()
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            list(pool.map(plain_replace, floor_names))
        floor = time.monotonic() - started

        # ocireg: a second registry user (the new credential) goes into reg-0's login Secret.
        new_password = "rotated-" + str(int(time.time()))
        self.registries.set_user("basic", "rotated-user", new_password)
        before = {
            s.metadata.namespace: s.data
            for s in self.core.list_secret_for_all_namespaces(
                label_selector="ocireg.dev/registry=reg-0"
            ).items
        }
        started = time.monotonic()
        self.core.patch_namespaced_secret(
            "login-0",
            CREDS_NS,
            {"stringData": {"username": "rotated-user", "password": new_password}},
        )

        def rotated() -> bool:
            # Raw JSON: decoding 1,000 Secrets into client models every poll would take a
            # good share of the two cores the operator is being measured on.
            answer = self.core.list_secret_for_all_namespaces(
                label_selector="ocireg.dev/registry=reg-0", _preload_content=False
            )
            items = json.loads(answer.data)["items"]
            changed = sum(1 for s in items if s["data"] != before.get(s["metadata"]["namespace"]))
            return changed >= len(before)

        _wait(rotated, 600, "every copy rotated", every=0.25)
        total = time.monotonic() - started
        self.quiesce()  # let every write of the rotation finish before the next figure
        # The operator watches the credentials namespace: the fan-out starts at the change.
        return {
            "copies": len(before),
            "ocireg_total_s": total,
            "floor_replace_s": floor,
            "floor_create_s": floor_create,
            "ratio_total": total / floor,
        }

    def quiesce(self, quiet_for: float = 15.0) -> None:
        """Wait until the operator has written nothing for ``quiet_for`` seconds."""
        last, since = _metric(self.metrics_port, "ocireg_secret_writes_total"), time.monotonic()
        while time.monotonic() - since < quiet_for:
            time.sleep(1)
            now = _metric(self.metrics_port, "ocireg_secret_writes_total")
            if now != last:
                last, since = now, time.monotonic()

    def p3_quiet(self) -> dict[str, float]:
        assert self.hook is not None
        writes_before = _metric(self.metrics_port, "ocireg_secret_writes_total")
        hook_before = sum(self.hook.calls.values())
        time.sleep(RESYNC * 3 + 5)
        return {
            "resync_periods": 3,
            "secret_writes": _metric(self.metrics_port, "ocireg_secret_writes_total")
            - writes_before,
            "webhook_mints_during": sum(self.hook.calls.values()) - hook_before,
            "webhook_mints_total": sum(self.hook.calls.values()),
        }

    def p6_restart(self) -> dict[str, float]:
        assert self.operator is not None
        self.operator.stop()
        started = time.monotonic()
        self.start_operator()
        # Converged: each object has done its first reconcile in this process.
        _wait(
            lambda: _metric(self.metrics_port, "ocireg_reconciles_total") >= self.args.registries,
            600,
            "every object reconciled after the restart",
            1,
        )
        converged = time.monotonic() - started
        self.quiesce()
        writes = _metric(self.metrics_port, "ocireg_secret_writes_total")
        # The webhook-backed registry mints a new token after a restart (new data, so its
        # copies are rewritten); the static ones have nothing new to write.
        minted = len(
            self.core.list_secret_for_all_namespaces(
                label_selector=f"ocireg.dev/registry=reg-{self.args.registries - 1}"
            ).items
        )
        return {
            "converged_s": converged,
            "writes_on_restart": writes,
            "writes_on_restart_static": max(0.0, writes - minted),
        }

    def run(self) -> dict[str, Any]:
        self.start()
        names = [f"bench-{i}" for i in range(self.args.namespaces)]
        self.results["namespaces_created_s"] = self.create_namespaces(names)
        _wait(
            lambda: (
                len(self.core.list_service_account_for_all_namespaces().items)
                >= self.args.namespaces
            ),
            600,
            "default ServiceAccounts",
            1,
        )
        self.start_operator()
        self.results["initial_fan_out_s"] = self.converge()
        assert self.operator is not None
        pid = self.operator.process.popen.pid  # type: ignore[union-attr]
        self.results["P4_rss_mb"] = _rss_mb(pid)
        self.results["P4_rss_peak_mb"] = _rss_mb(pid, "VmHWM")  # the initial fan-out included
        self.results["P1_new_namespace"] = self.p1_new_namespace()
        self.results["P3_quiet"] = self.p3_quiet()
        self.results["P2_rotation"] = self.p2_rotation()
        self.results["P6_restart"] = self.p6_restart()
        self.results["P4_rss_mb_after"] = _rss_mb(self.operator.process.popen.pid)  # type: ignore[union-attr]
        self.results["parameters"] = {
            "namespaces": self.args.namespaces,
            "registries": self.args.registries,
            "concurrency": self.args.concurrency,
            "resync_s": RESYNC,
            "admission_webhook": bool(self.args.admission),
        }
        return self.results

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        if self.hook is not None:
            self.hook.stop()
        self.registries.stop()
        self.cluster.stop()


def table(results: dict[str, Any]) -> str:
    p1, p2, p3, p6 = (
        results["P1_new_namespace"],
        results["P2_rotation"],
        results["P3_quiet"],
        results["P6_restart"],
    )
    params = results["parameters"]
    rows = [
        ("setup", f"{params['namespaces']} namespaces x {params['registries']} registries, "
         f"concurrency {params['concurrency']}",
         "admission webhook on" if params.get("admission_webhook") else ""),
        ("initial fan-out", f"{results['initial_fan_out_s']:.1f} s",
         f"{params['namespaces'] * params['registries']} Secrets"),
        ("P1 new namespace -> secrets + SA", f"p50 {p1['p50_s']:.2f} s, p99 {p1['p99_s']:.2f} s",
         f"max {p1['max_s']:.2f} s over {p1['samples']}; aim p99 <= 1 s"),
        ("P2 rotate one registry", f"{p2['ocireg_total_s']:.1f} s for {p2['copies']} copies",
         f"floor {p2['floor_replace_s']:.1f} s; ratio {p2['ratio_total']:.2f} (aim <= 1.5, "
         "from the login Secret's change to the last copy)"),
        ("P3 quiet resyncs", f"{p3['secret_writes']:.0f} writes in {p3['resync_periods']} periods",
         f"webhook mints during: {p3['webhook_mints_during']}, total {p3['webhook_mints_total']}"),
        ("P4 operator RSS", f"{results['P4_rss_mb']:.0f} MB",
         f"peak {results['P4_rss_peak_mb']:.0f} MB, after the run "
         f"{results['P4_rss_mb_after']:.0f} MB; aim <= 120 MB"),
        ("P6 restart -> converged", f"{p6['converged_s']:.1f} s",
         f"{p6['writes_on_restart']:.0f} writes on restart, "
         f"{p6['writes_on_restart_static']:.0f} of them by static registries"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:<36}  {note}" for name, value, note in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--registries", type=int, default=10)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--admission", action="store_true", help="run the operator with its admission webhook on"
    )
    args = parser.parse_args()
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        bench.stop()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(yaml.safe_dump({"json": str(args.json)}) if args.json else "", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
