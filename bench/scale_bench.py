"""Propagation and scale benchmark on the real local control plane.

    .venv/bin/python bench/scale_bench.py [--namespaces 1000] [--registries 10] [--samples 50]
                                          [--credential-samples 20] [--concurrency 16]
                                          [--tenants] [--admission] [--json bench/scale.json]

Three shapes, by flags (`bench/run_all.sh`, or `make bench`, runs all three):

  (a) 1,000 namespaces x 10 ClusterOCIRegistry, 10,000 pull secrets (the defaults);
  (b) --namespaces 10000: 10,000 x 10, 100,000 pull secrets; nothing the benchmark itself does
      grows faster than the number of objects (creation in parallel, Secrets counted by one
      paged list and a watch, never one GET per object);
  (c) --tenants --namespaces 5000 --registries 5: every namespace also holds its own
      `OCIRegistry` (basic auth from a Secret in that namespace, the local registry's CA from a
      ConfigMap there, pull secret in its own namespace), plus the 5 ClusterOCIRegistry objects.

In every shape the last ClusterOCIRegistry gets its credentials from a webhook (the stand-in
counts each mint); the others, and the tenants, log in with basic auth at the local registry.
--admission runs the operator with its admission webhook on (the API server calls it for every
ServiceAccount created during the run).

What it measures (one run, one table, the same figures as JSON):
  fan-out  the initial fan-out (every registry object created, until the benchmark's watch of
      the managed Secrets has seen every pull secret and every object is Ready), against
      floors: a plain client at the same concurrency, in the same run (before the operator
      starts; deleted again before it does). `floor_create_s`: creating as many Secrets, until
      the client returned from the last, no watch open (`ratio`, as in older runs);
      `floor_end_state_s`: the fan-out's end state, made and timed as ocireg's is: one job per
      namespace creates its Secrets, then patches `default` to reference them (one merge
      patch), until a watch of the floor's Secrets (a `Tally`, opened before the writes) had
      seen every Secret and the last patch had returned (`ratio_end_state`, the like-for-like
      ratio: in the fan-out the API server encodes an event per Secret for the benchmark's
      watch and the benchmark decodes it, on the same cores; `floor_end_state_return_s`: until
      the client returned). The patches are undone, untimed, before the operator starts;
  P1  new namespace -> every selecting ClusterOCIRegistry's pull secret present and the
      `default` ServiceAccount referencing them all: p50 / p99 / max, with N namespaces present;
      with --tenants also P1t: a new tenant (namespace, login Secret, CA ConfigMap, OCIRegistry)
      -> its own pull secret and the cluster ones, and `default` referencing them all;
  P2  rotating one ClusterOCIRegistry's credentials across N namespaces (until the watch has
      seen every copy with new data), against the floor: a plain client replacing the same N
      Secrets with the same concurrency, in the same run: `floor_replace_s` until the client
      returned, no watch open (`ratio_total`, as in older runs), then `floor_replace_seen_s`
      replacing them again until a watch of them, opened before, had seen each with its new
      data, as ocireg's copies are seen (`ratio_seen`);
  P3  Secret writes during several resync periods with nothing changed, and mints per identity;
  P4  operator RSS (VmRSS now, VmHWM the peak) after the fan-out and at the end;
  P5  a credentials Secret change -> the managed copy rewritten, as a user sees it: the
      password in a Secret is changed (a new password the registry accepts) and the clock stops
      when the dockerconfigjson copy, as the API server serves it, holds the new password. With
      --tenants the Secret is one tenant's login Secret and the copy is that tenant's; in the
      cluster-only shapes it is a ClusterOCIRegistry's login Secret in the credentials
      namespace, and the copy is the one in a namespace drawn at random each sample (the time
      until every copy holds it is recorded too). Nothing is assumed about how the operator
      notices: the benchmark only watches the copies;
  idle  API requests per minute and operator CPU over one idle minute (the first minute of P3:
      nothing changes): the sum of `apiserver_request_total` from the API server's own
      /metrics, before and after, broken down by verb and resource; utime+stime of the operator
      from /proc/<pid>/stat (and of any children it has), and of kube-apiserver, etcd and
      kube-controller-manager for context. The same minute is measured once before the
      operator starts (`idle.baseline`), so the control plane's own traffic can be read off;
  P6  operator restart -> converged (every object reconciled once by the new process; also the
      time of its last Secret write), and what it did meanwhile: Secret writes (the operator's
      counter and the API server's POST/PUT/PATCH of secrets), mints at the webhook stand-in,
      every request by verb and resource.

Who else talks to the API server in this control plane (no kubelet, scheduler or other
controller runs): kube-controller-manager (its five controllers' informers, whose watches end
and are opened again, and discovery: GET /api and /apis a few times a minute), kube-apiserver
itself over loopback (its identity Lease, PUT leases every 10 s, and its own informers); in the
baseline of the first runs that was about 25 requests a minute, 12 of them GET /openapi/v3.
The registry and the webhook stand-in never call it. Nothing is subtracted: `idle.baseline` is
the same minute measured before the operator starts, to read that traffic off. The benchmark
makes no request during the minute: its watch is stopped (its last request has ended) before
the window and started again after it, the operator's own /metrics (which does not reach the
API server) is read only before and after, and the API server's /metrics, scraped at both ends,
is not counted in apiserver_request_total.

The benchmark's own clients keep as many connections as --concurrency (the Kubernetes client
keeps 5 per CPU by default, 10 on two cores, and closes any connection past that after its
request) and read answers as JSON without building client model objects. The floors were
written with the client's generated API classes before (model objects, validated arguments),
so their times and the ratios to them are not comparable with runs before this change.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from operator import contains
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import requests
import yaml
from requests.adapters import HTTPAdapter

from ocireg.api.crd import crd_files
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.image import write_identity
from ocireg_devenv.operator import InClusterIdentity, OperatorProcess
from ocireg_devenv.processes import Tools, free_port
from ocireg_devenv.registries import LocalRegistries
from ocireg_devenv.standins import WebhookStandIn

CREDS_NS = "ocireg-system"
LABEL = {"ocireg-bench": "yes"}
ADMISSION_CONFIGURATION = "ocireg-bench"
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
MANAGED = "app.kubernetes.io/managed-by=ocireg"
REGISTRY_LABEL = "ocireg.dev/registry"
TENANT_REG = "tenant-reg"  # every tenant's OCIRegistry, and its pull secret
FLOOR_LABEL = "ocireg-bench/floor"
WATCH_SECONDS = 15  # the benchmark's own watch requests end after this (so it can stop)
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


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


def _spread(samples: list[float]) -> dict[str, float]:
    return {
        "p50_s": statistics.median(samples),
        "p99_s": _quantile(samples, 0.99),
        "max_s": max(samples),
        "samples": len(samples),
    }


def _metric(port: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _metric_by(port: int, name: str, label: str) -> dict[str, float]:
    """One metric of the operator's, summed per value of ``label``."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(_LABELS.findall(line[len(name) + 1 : line.rindex("}")]))
            key = labels.get(label, "")
            found[key] = found.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def _reconcile_seconds(port: int) -> dict[str, dict[str, float]]:
    """The operator's reconciles so far, per kind: how many and their mean duration."""
    total = _metric_by(port, "ocireg_reconcile_duration_seconds_sum", "kind")
    count = _metric_by(port, "ocireg_reconcile_duration_seconds_count", "kind")
    return {
        kind: {"reconciles": count[kind], "mean_s": total.get(kind, 0.0) / count[kind]}
        for kind in count
        if count[kind]
    }


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS), or the peak so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds: utime + stime + the reaped children's cutime + cstime)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return int(fields[1]), ticks / CLK_TCK


def _process_tree(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents.setdefault(_stat(int(entry.name))[0], []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def _cpu_seconds(pid: int) -> tuple[float, int]:
    """CPU seconds of a process and every live descendant, and how many descendants."""
    total, tree = 0.0, _process_tree(pid)
    for member in tree:
        with contextlib.suppress(OSError):
            total += _stat(member)[1]
    return total, len(tree) - 1


def _parallel(work: Callable[[T], Any], items: Iterable[T], workers: int) -> list[Any]:
    """``work`` over ``items`` on ``workers`` threads; on an interrupt the queued rest is
    cancelled instead of waited for."""
    pool = ThreadPoolExecutor(workers)
    try:
        return list(pool.map(work, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _digest(data: Any) -> int:
    return hash(json.dumps(data, sort_keys=True))


def _holds_password(secret: dict[str, Any], password: str) -> bool:
    """Whether a dockerconfigjson Secret's entries carry ``password``."""
    raw = (secret.get("data") or {}).get(".dockerconfigjson")
    if not raw:
        return False
    try:
        auths = json.loads(base64.b64decode(raw)).get("auths") or {}
    except ValueError:
        return False
    for entry in auths.values():
        if entry.get("password") == password:
            return True
        with contextlib.suppress(ValueError):
            if base64.b64decode(entry.get("auth") or "").decode().endswith(":" + password):
                return True
    return False


def _present(_key: Any, _secret: Any) -> bool:
    """A Tracker's check for a Secret that only has to exist."""
    return True


def _all_done(tracker: Tracker) -> bool:
    return not tracker.pending


def _docker_config(server: str, username: str, password: str) -> str:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    entry = {"username": username, "password": password, "auth": auth}
    return base64.b64encode(json.dumps({"auths": {server: entry}}).encode()).decode()


# --------------------------------------------------------------------------- the API


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, text: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {text[:300]}")
        self.status = status


class Gone(Exception):
    """A watch's resourceVersion is too old: list again."""


class Api:
    """The benchmark's own requests: raw JSON as the admin (client certificate), with a
    connection pool as large as the concurrency."""

    PARTIAL = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"

    def __init__(self, cluster: ControlPlane, pool: int) -> None:
        self.base = cluster.server
        session = requests.Session()
        session.trust_env = False  # no proxies or CA bundles from the environment
        session.verify = str(cluster.pki_dir / "ca.crt")
        session.cert = (str(cluster.pki_dir / "admin.crt"), str(cluster.pki_dir / "admin.key"))
        session.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=pool))
        self.session = session

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Any:
        headers = {"Accept": accept}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        answer = self.session.request(
            method, self.base + path, params=params, data=data, headers=headers, timeout=60
        )
        if answer.status_code not in ok:
            raise ApiError(method, path, answer.status_code, answer.text)
        return answer.json() if answer.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params or None)

    def find(self, path: str) -> Any:
        """The object, or None when it does not exist."""
        try:
            return self.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, body, content_type="application/merge-patch+json")

    def pages(
        self, path: str, limit: int = 500, accept: str = "application/json", **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Every page of a list (the last one carries the list's resourceVersion)."""
        token = None
        while True:
            query = {"limit": limit, **params, **({"continue": token} if token else {})}
            page = self.call("GET", path, params=query, accept=accept)
            yield page
            token = page["metadata"].get("continue")
            if not token:
                return

    def items(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        for page in self.pages(path, **params):
            yield from page["items"] or []

    def count(self, path: str, **params: Any) -> int:
        """How many objects a list holds: paged, metadata only."""
        return sum(len(p["items"] or []) for p in self.pages(path, accept=self.PARTIAL, **params))

    def watch(self, path: str, resource_version: str, **params: Any) -> Iterator[dict[str, Any]]:
        """The events of one watch request, which the server ends after WATCH_SECONDS."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": WATCH_SECONDS,
            **params,
        }
        with self.session.get(
            self.base + path, params=query, stream=True, timeout=(10, WATCH_SECONDS + 30)
        ) as answer:
            if answer.status_code == 410:
                raise Gone()
            if answer.status_code != 200:
                raise ApiError("WATCH", path, answer.status_code, answer.text)
            buffered = b""
            # chunk_size=None: each chunk as the server flushes it (one event or more), so an
            # event is seen when it is sent, not when the next one fills a fixed-size read.
            for chunk in answer.iter_content(chunk_size=None):
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


class Plain:
    """The floors' plain client: the Kubernetes client's ApiClient (urllib3, the transport the
    operator's calls go through too), JSON in and out like the operator's, with a pool for the
    concurrency; no model objects, no validation of arguments."""

    def __init__(self, kubeconfig: Path, pool: int) -> None:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = pool
        self.client = kubernetes.client.ApiClient(configuration)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*request)
        data = response.read()
        response.response.release_conn()
        if not 200 <= response.status <= 299:
            raise ApiError(method, path, response.status, data.decode(errors="replace"))
        return json.loads(data)


class Tracker:
    """Keys waited for until ``check(key, secret)`` holds; when each first did (monotonic)."""

    def __init__(self, keys: Iterable[tuple[str, str]], check: Callable[[Any, Any], bool]) -> None:
        self.pending = set(keys)
        self.total = len(self.pending)
        self.done_at: dict[tuple[str, str], float] = {}
        self.check = check

    def see(self, key: tuple[str, str], secret: dict[str, Any], now: float) -> None:
        if key in self.pending and self.check(key, secret):
            self.pending.discard(key)
            self.done_at[key] = now


class Tally:
    """The managed Secrets as the API server serves them, kept by one paged list and then a
    watch (label selector): counting 100,000 of them costs no polling, and a rotation is seen
    Secret by Secret as it happens. Keeps (registry label, digest of the data) per Secret."""

    def __init__(self, api: Api, selector: str = MANAGED) -> None:
        self.api = api
        self.selector = selector
        self.items: dict[tuple[str, str], tuple[str, int]] = {}
        self.cond = threading.Condition()
        self.trackers: list[Tracker] = []
        self.failures = 0
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Tally:
        self._stop.clear()
        self._synced.clear()
        self._thread = threading.Thread(target=self._run, name="tally", daemon=True)
        self._thread.start()
        if not self._synced.wait(300):
            raise TimeoutError("the benchmark's list of managed Secrets")
        return self

    def stop(self) -> None:
        """Stop watching; returns once the last watch request has ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WATCH_SECONDS + 45)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                while not self._stop.is_set():
                    for event in self.api.watch(
                        "/api/v1/secrets", version, labelSelector=self.selector
                    ):
                        version = self._apply(event) or version
            except Gone:
                continue
            except Exception:  # the API server busy or away: list again after a second
                self.failures += 1
                time.sleep(1)

    def _list(self) -> str:
        fresh: dict[tuple[str, str], tuple[str, int]] = {}
        version = ""
        now = time.monotonic()
        for page in self.api.pages("/api/v1/secrets", labelSelector=self.selector):
            version = page["metadata"]["resourceVersion"]
            with self.cond:
                for secret in page["items"]:
                    key = self._key(secret)
                    fresh[key] = self._entry(secret)
                    for tracker in self.trackers:
                        tracker.see(key, secret, now)
        with self.cond:
            self.items = fresh
            self.cond.notify_all()
        self._synced.set()
        return version

    @staticmethod
    def _key(secret: dict[str, Any]) -> tuple[str, str]:
        return secret["metadata"]["namespace"], secret["metadata"]["name"]

    @staticmethod
    def _entry(secret: dict[str, Any]) -> tuple[str, int]:
        labels = secret["metadata"].get("labels") or {}
        return labels.get(REGISTRY_LABEL, ""), _digest(secret.get("data"))

    def _apply(self, event: dict[str, Any]) -> str | None:
        kind, body = event["type"], event["object"]
        if kind == "ERROR":
            if body.get("code") == 410:
                raise Gone()
            raise RuntimeError(f"watch error: {body}")
        version: str | None = body["metadata"].get("resourceVersion")
        if kind == "BOOKMARK":
            return version
        now = time.monotonic()
        key = self._key(body)
        with self.cond:
            if kind == "DELETED":
                self.items.pop(key, None)
            else:
                self.items[key] = self._entry(body)
                for tracker in self.trackers:
                    tracker.see(key, body, now)
            self.cond.notify_all()
        return version

    def __len__(self) -> int:
        return len(self.items)

    def of(self, registry: str) -> dict[tuple[str, str], int]:
        """Each copy of one registry object's Secrets: key -> digest of its data."""
        with self.cond:
            return {k: d for k, (label, d) in self.items.items() if label == registry}

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
                self.cond.wait(min(left, 1.0))

    @contextlib.contextmanager
    def tracking(self, tracker: Tracker) -> Iterator[Tracker]:
        with self.cond:
            self.trackers.append(tracker)
        try:
            yield tracker
        finally:
            with self.cond:
                self.trackers.remove(tracker)


_REQUESTS = re.compile(r"^apiserver_request_total\{(.*)\} (\S+)$")
_LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _by_request(text: str) -> Counter[str]:
    """apiserver_request_total from /metrics, summed per "VERB resource[/subresource]"."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = _REQUESTS.match(line)
        if match:
            labels = dict(_LABELS.findall(match[1]))
            resource = labels.get("resource") or "(non-resource)"
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            counts[f"{labels.get('verb', '?')} {resource}"] += int(float(match[2]))
    return counts


def _delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    changed = {k: after[k] - before.get(k, 0) for k in after}
    return dict(sorted(((k, v) for k, v in changed.items() if v), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="ocireg-bench-"))
        self.tools = Tools.locate()
        self.cluster = ControlPlane(self.workdir / "cluster", self.tools)
        self.registries = LocalRegistries(self.workdir / "registries", self.tools)
        self.results: dict[str, Any] = {}
        self.phases: dict[str, float] = {}
        self.operator: OperatorProcess | None = None
        self.hook: WebhookStandIn | None = None
        self.tally: Tally | None = None
        self.metrics_port = free_port()
        self.names = [f"bench-{i}" for i in range(args.namespaces)]
        self.tenant_names: list[str] = list(self.names) if args.tenants else []
        # Tenants whose password P5 changes: their own registry users (the rest share one).
        count = min(args.credential_samples, len(self.tenant_names))
        self.sampled_tenants = sorted({i * len(self.tenant_names) // count for i in range(count)})
        self.rng = random.Random(20261204)  # the namespaces P5 looks at, the same every run
        # With --admission the operator also serves the ServiceAccount admission webhook (the
        # API server calls it for every ServiceAccount created).
        self.admission_args: tuple[str, ...] = ()
        if args.admission:
            self.admission_args = (
                "--admission-webhook",
                "--admission-address", "127.0.0.1",
                "--admission-port", str(free_port()),
                "--admission-configuration", ADMISSION_CONFIGURATION,
            )  # fmt: skip
        self.identity: InClusterIdentity | None = None  # --in-cluster: set once CRDs exist
        # Tenants' registries are reached under the egress policy: the local one is loopback.
        self.tenant_args = ("--egress-allowed-cidr", "127.0.0.0/8") if args.tenants else ()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - started, 1)

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        self.cluster.start()
        self.registries.start(("basic",))
        self.api = Api(self.cluster, self.args.concurrency + 4)
        self.plain = Plain(self.cluster.admin_kubeconfig, self.args.concurrency + 4)
        (self.workdir / "crds").mkdir()
        for name, text in crd_files().items():
            (self.workdir / "crds" / name).write_text(text)
        self.cluster.kubectl("apply", "-f", str(self.workdir / "crds"))
        for plural in ("clusterociregistries", "ociregistries"):
            self.cluster.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", f"crd/{plural}.ocireg.dev"
            )
        basic = self.registries.basic
        self.api.post("/api/v1/namespaces", {"metadata": {"name": CREDS_NS}})
        for index in range(self.args.registries):  # one login per registry: P2 rotates one
            self.api.post(
                f"/api/v1/namespaces/{CREDS_NS}/secrets",
                {
                    "metadata": {"name": f"login-{index}"},
                    "stringData": {"username": basic.username, "password": basic.password},
                },
            )
        self.api.post(
            f"/api/v1/namespaces/{CREDS_NS}/configmaps",
            {"metadata": {"name": "ca"}, "data": {"ca.crt": self.registries.ca_file.read_text()}},
        )
        self.hook = WebhookStandIn(
            lambda user, password: self.registries.set_user("basic", user, password),
            header=("X-Key", "bench"),
            lifetime=None,
        ).start()
        self.api.post(
            f"/api/v1/namespaces/{CREDS_NS}/secrets",
            {"metadata": {"name": "hook"}, "stringData": {"X-Key": "bench"}},
        )
        self.tenant_passwords = {i: f"tenant-{i}-{time.time_ns()}" for i in self.sampled_tenants}
        if self.tenant_passwords:
            self._let_in({self._tenant_user(i): p for i, p in self.tenant_passwords.items()})

    def _let_in(self, users: dict[str, str]) -> None:
        """Let these users in at the basic registry, in one rewrite of its htpasswd
        (LocalRegistries.set_user rewrites it, every user hashed again, once per user)."""
        extra = self.registries._extra_users.setdefault("basic", {})
        extra.update(users)
        self.registries._write_htpasswd("basic")

    @staticmethod
    def _tenant_user(index: int) -> str:
        return f"tenant-user-{index}"

    def _tenant_login(self, index: int | None) -> dict[str, str]:
        if index is not None and index in self.tenant_passwords:
            return {"username": self._tenant_user(index), "password": self.tenant_passwords[index]}
        basic = self.registries.basic
        return {"username": basic.username, "password": basic.password}

    def tenant_spec(self, namespace: str) -> dict[str, Any]:
        tls: dict[str, Any] = (
            {"caBundleRef": {"configMap": "ca"}}
            if self.args.tenant_tls == "ca"
            else {"insecureSkipVerify": True}
        )
        return {
            "apiVersion": "ocireg.dev/v1alpha1",
            "kind": "OCIRegistry",
            "metadata": {"name": TENANT_REG, "namespace": namespace},
            "spec": {
                "server": self.registries.basic.host,
                "auth": {"basic": {"secretRef": {"name": "login"}}},
                "tls": tls,
                "targets": {"secretName": TENANT_REG},
            },
        }

    def create_namespace(self, name: str, tenant: int | None = None) -> None:
        """A labelled namespace; a tenant's also gets its login Secret and CA ConfigMap."""
        self.api.post("/api/v1/namespaces", {"metadata": {"name": name, "labels": LABEL}})
        if tenant is None:
            return
        self.api.post(
            f"/api/v1/namespaces/{name}/secrets",
            {"metadata": {"name": "login"}, "stringData": self._tenant_login(tenant)},
        )
        if self.args.tenant_tls == "ca":
            self.api.post(
                f"/api/v1/namespaces/{name}/configmaps",
                {
                    "metadata": {"name": "ca"},
                    "data": {"ca.crt": self.registries.ca_file.read_text()},
                },
            )

    def create_namespaces(self) -> float:
        started = time.monotonic()
        tenants = set(range(len(self.tenant_names)))
        _parallel(
            lambda i: self.create_namespace(self.names[i], i if i in tenants else None),
            range(len(self.names)),
            self.args.concurrency,
        )
        return time.monotonic() - started

    def default_accounts(self) -> int:
        return sum(
            1
            for sa in self.api.items(
                "/api/v1/serviceaccounts",
                accept=Api.PARTIAL,
                fieldSelector="metadata.name=default",
            )
            if sa["metadata"]["namespace"].startswith("bench-")
        )

    def start_operator(self) -> float:
        started = time.monotonic()
        self.operator = OperatorProcess(
            self.cluster.admin_kubeconfig,
            self.workdir,
            (
                "--credentials-namespace", CREDS_NS,
                "--concurrency", str(self.args.concurrency),
                "--resync", str(self.args.resync),
                "--metrics-port", str(self.metrics_port),
                "--metrics-address", "127.0.0.1",
                *self.admission_args,
                *self.tenant_args,
            ),
            name=f"ocireg-{int(started)}",
            env=dict(item.split("=", 1) for item in self.args.env),
            verbose=False,  # at this scale a verbose log would measure logging
            in_cluster=self.identity,
        )  # fmt: skip
        self.operator.start(timeout=300)
        return time.monotonic() - started

    def in_cluster_identity(self) -> InClusterIdentity:
        """The identity `kubectl apply -k manifests/` gives the operator (ServiceAccount ocireg
        in ocireg-system, its ClusterRole, the leader-election Role and the admission policies
        that bound what it may write), with a TokenRequest token as a kubelet mounts it. With
        --admission, the bench's webhook configuration gets the rule the admission component
        gives the chart's."""
        wanted = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
        wanted |= {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
        rendered = yaml.safe_load_all(self.cluster.kubectl("kustomize", str(MANIFESTS)).stdout)
        objects = [o for o in rendered if o and o["kind"] in wanted]
        if self.args.admission:
            rule = {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": [ADMISSION_CONFIGURATION],
                "verbs": ["get", "patch"],
            }
            objects += [
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "MutatingWebhookConfiguration",
                    "metadata": {"name": ADMISSION_CONFIGURATION},
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": "ocireg-bench-admission"},
                    "rules": [rule],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "ocireg-bench-admission"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "ocireg-bench-admission",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "ocireg", "namespace": CREDS_NS}
                    ],
                },
            ]
        path = self.workdir / "identity.yaml"
        path.write_text(yaml.safe_dump_all(objects))
        self.cluster.kubectl("apply", "-f", str(path))
        token = self.cluster.service_account_token(CREDS_NS, "ocireg", "12h")
        directory = write_identity(
            self.workdir / "serviceaccount", token, self.cluster.ca.cert_pem, CREDS_NS
        )
        return InClusterIdentity(directory, self.cluster.port)

    @property
    def pid(self) -> int:
        assert self.operator is not None
        assert self.operator.process.popen is not None
        return self.operator.process.popen.pid

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

    @property
    def objects(self) -> int:
        """Registry objects that exist: the cluster ones and every tenant's."""
        return self.args.registries + len(self.tenant_names)

    @property
    def per_namespace(self) -> int:
        """Pull secrets in each bench namespace."""
        return self.args.registries + (1 if self.args.tenants else 0)

    def not_ready(self) -> int:
        """Registry objects not (yet) Ready for their current generation."""
        ready = 0
        for plural in ("clusterociregistries", "ociregistries"):
            for item in self.api.items(f"/apis/ocireg.dev/v1alpha1/{plural}"):
                for c in (item.get("status") or {}).get("conditions") or []:
                    if (
                        c["type"] == "Ready"
                        and c["status"] == "True"
                        and c.get("observedGeneration") == item["metadata"]["generation"]
                    ):
                        ready += 1
        return self.objects - ready

    # ------------------------------------------------------------------ measurements

    def fan_out_floor(self) -> dict[str, float]:
        """The fan-out's floors, each timed as the fan-out is (a watch of its Secrets, see
        ``floor_writes``), each deleted again before the operator starts: a plain client
        creating as many Secrets as the fan-out writes, same concurrency, bodies of the same
        shape; then the same end state as the fan-out's, as ocireg's namespace jobs make it:
        one job per namespace creates that namespace's Secrets, then patches `default` to
        reference them (one merge patch), at the same concurrency. The patches are undone
        (not timed) before the operator starts."""
        server, basic = self.registries.basic.host, self.registries.basic
        payload = _docker_config(server, basic.username, basic.password)
        names = [f"floor-{r}" for r in range(self.per_namespace)]
        jobs = [(ns, name) for ns in self.names for name in names]
        selector = f"{FLOOR_LABEL}=fan-out"
        refs = {"imagePullSecrets": [{"name": name} for name in names]}

        def create(job: tuple[str, str]) -> None:
            namespace, name = job
            body = {
                "metadata": {
                    "name": name,
                    "labels": {
                        FLOOR_LABEL: "fan-out",
                        "ocireg-bench/registry": name,
                        "ocireg-bench/kind": "floor",
                        "ocireg-bench/uid": "00000000-0000-0000-0000-000000000000",
                    },
                    "annotations": {"ocireg-bench/owner": f"Floor/{name}"},
                },
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": payload},
            }
            self.plain.call("POST", f"/api/v1/namespaces/{namespace}/secrets", body)

        def namespace_job(namespace: str) -> None:
            for name in names:
                create((namespace, name))
            self.plain.call(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/serviceaccounts/default",
                refs,
                content_type="application/merge-patch+json",
            )

        def delete(namespace: str) -> None:
            self.plain.call(
                "DELETE",
                f"/api/v1/namespaces/{namespace}/secrets",
                query={"labelSelector": selector},
            )

        def delete_all() -> float:
            started = time.monotonic()
            _parallel(delete, self.names, self.args.concurrency)
            deleted = time.monotonic() - started
            left = self.api.count("/api/v1/secrets", labelSelector=selector)
            assert left == 0, f"{left} floor Secrets left"
            return deleted

        started = time.monotonic()  # as before this watch was added (older runs' ratio)
        _parallel(create, jobs, self.args.concurrency)
        created = time.monotonic() - started
        deleted = delete_all()
        returned, end_seen = self.floor_writes(selector, jobs, _present, namespace_job, self.names)
        # Undone: `default` had no imagePullSecrets before (the namespaces are new).
        path = "/api/v1/namespaces/{}/serviceaccounts/default"
        _parallel(
            lambda ns: self.api.patch(path.format(ns), {"imagePullSecrets": None}),
            self.names,
            self.args.concurrency,
        )
        referring = [
            sa["metadata"]["namespace"]
            for sa in self.api.items(
                "/api/v1/serviceaccounts", fieldSelector="metadata.name=default"
            )
            if {r.get("name") for r in sa.get("imagePullSecrets") or []} & set(names)
        ]
        assert not referring, f"`default` still refers to floor Secrets in {referring[:5]}"
        delete_all()
        return {
            "secrets": len(jobs),
            "floor_create_s": created,
            "floor_delete_s": deleted,
            "floor_end_state_return_s": returned,
            "floor_end_state_s": max(returned, end_seen),
        }

    def floor_writes(
        self,
        selector: str,
        keys: list[tuple[str, str]],
        check: Callable[[Any, Any], bool],
        work: Callable[[T], Any],
        items: Iterable[T],
    ) -> tuple[float, float]:
        """A floor's writes (``work`` over ``items`` at --concurrency) timed as ocireg's are: a
        ``Tally`` of the floor's Secrets (``selector``) is listed and watching first. Returns
        the seconds until the client returned from the last write, and until the watch had
        seen ``check`` hold for every (namespace, name) of ``keys``. The watch is stopped
        after (its last request ended)."""
        tally = Tally(self.api, selector).start()
        tracker = Tracker(keys, check)
        try:
            with tally.tracking(tracker):
                started = time.monotonic()
                _parallel(work, items, self.args.concurrency)
                returned = time.monotonic() - started
                tally.wait(partial(_all_done, tracker), 600 + len(keys) * 0.05, "floor writes")
        finally:
            tally.stop()
        return returned, max(tracker.done_at.values(), default=started) - started

    def converge(self) -> dict[str, Any]:
        assert self.tally is not None
        requests_before = self.apiserver_requests()
        started = time.monotonic()
        cluster = [self.registry_spec(i) for i in range(self.args.registries)]
        _parallel(
            lambda body: self.api.post("/apis/ocireg.dev/v1alpha1/clusterociregistries", body),
            cluster,
            self.args.concurrency,
        )
        _parallel(
            lambda ns: self.api.post(
                f"/apis/ocireg.dev/v1alpha1/namespaces/{ns}/ociregistries", self.tenant_spec(ns)
            ),
            self.tenant_names,
            self.args.concurrency,
        )
        created = time.monotonic() - started
        expected = len(self.names) * self.per_namespace
        tally = self.tally
        tally.wait(lambda: len(tally) >= expected, 3600 + expected * 0.05, f"{expected} secrets")
        secrets_at = time.monotonic() - started
        every = max(0.5, self.objects / 1000)  # a paged list of every object each time
        _wait(lambda: self.not_ready() == 0, 900, "every registry object Ready", every)
        total = time.monotonic() - started
        # Every request in the fan-out, the benchmark's among them: its POSTs of the registry
        # objects, its LISTs of them (Ready?) and its one WATCH of secrets.
        counts = _delta(self.apiserver_requests(), requests_before)
        return {
            "reconciles": _reconcile_seconds(self.metrics_port),
            "total_s": total,
            "secrets_s": secrets_at,
            "objects_created_s": created,
            "secrets": expected,
            "api_requests": sum(counts.values()),
            "by_request": counts,
        }

    def served(self, namespace: str, wanted: set[str]) -> bool:
        """``wanted`` pull secrets in the namespace and its `default` referencing them all."""
        found = {
            s["metadata"]["name"]
            for s in self.api.get(f"/api/v1/namespaces/{namespace}/secrets", labelSelector=MANAGED)[
                "items"
            ]
        }
        if found != wanted:
            return False
        sa = self.api.find(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
        return sa is not None and {r["name"] for r in sa.get("imagePullSecrets") or []} >= wanted

    def p1_new_namespace(self) -> dict[str, float]:
        samples = []
        wanted = {f"reg-{i}" for i in range(self.args.registries)}
        for i in range(self.args.samples):
            name = f"late-{i}"
            started = time.monotonic()
            self.create_namespace(name)
            _wait(partial(self.served, name, wanted), 120, f"namespace {name}", every=0.02)
            samples.append(time.monotonic() - started)
        return _spread(samples)

    def p1_new_tenant(self) -> dict[str, float]:
        """A new tenant: namespace, login Secret, CA ConfigMap and OCIRegistry, created one
        after the other, until its own and the cluster pull secrets are there and `default`
        refers to them all."""
        samples = []
        wanted = {f"reg-{i}" for i in range(self.args.registries)} | {TENANT_REG}
        for i in range(self.args.samples):
            name = f"late-tenant-{i}"
            started = time.monotonic()
            self.create_namespace(name, tenant=-1)
            self.api.post(
                f"/apis/ocireg.dev/v1alpha1/namespaces/{name}/ociregistries",
                self.tenant_spec(name),
            )
            self.tenant_names.append(name)
            _wait(partial(self.served, name, wanted), 120, f"tenant {name}", every=0.02)
            samples.append(time.monotonic() - started)
        return _spread(samples)

    def p2_rotation(self) -> dict[str, float]:
        assert self.tally is not None
        # The floor: a plain client replacing the same number of Secrets, same concurrency,
        # seen replaced by a watch of them as ocireg's copies are by the Tally.
        label = {FLOOR_LABEL: "rotation"}
        payload = base64.b64encode(b'{"auths":{}}').decode()

        def plain_write(ns: str) -> None:
            self.plain.call(
                "POST",
                f"/api/v1/namespaces/{ns}/secrets",
                {
                    "metadata": {"name": "floor", "labels": label},
                    "type": "kubernetes.io/dockerconfigjson",
                    "data": {".dockerconfigjson": payload},
                },
            )

        concurrency = self.args.concurrency
        started = time.monotonic()
        _parallel(plain_write, self.names, concurrency)
        floor_create = time.monotonic() - started

        def data(auths: bytes) -> dict[str, str]:
            return {".dockerconfigjson": base64.b64encode(auths).decode()}

        def plain_replace(replaced: dict[str, str], ns: str) -> None:
            body: dict[str, Any] = {
                "metadata": {"name": "floor", "labels": label},
                "type": "kubernetes.io/dockerconfigjson",
                "data": replaced,
            }
            path = f"/api/v1/namespaces/{ns}/secrets/floor"
            current = self.plain.call("GET", path)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.plain.call("PUT", path, body)

        # Replaced twice: as in older runs (no watch open), then seen by a watch.
        started = time.monotonic()
        _parallel(partial(plain_replace, data(b'{"auths":{"x":{}}}')), self.names, concurrency)
        floor = time.monotonic() - started
        second = data(b'{"auths":{"y":{}}}')
        _, floor_seen = self.floor_writes(
            f"{FLOOR_LABEL}=rotation",
            [(ns, "floor") for ns in self.names],
            lambda _key, secret: secret.get("data") == second,
            partial(plain_replace, second),
            self.names,
        )

        # ocireg: a second registry user (the new credential) goes into reg-0's login Secret.
        new_password = "rotated-" + str(int(time.time()))
        self.registries.set_user("basic", "rotated-user", new_password)
        self.rotated_password = new_password
        before = self.tally.of("reg-0")
        tracker = Tracker(before, lambda key, s: _digest(s.get("data")) != before[key])
        with self.tally.tracking(tracker):
            started = time.monotonic()
            self.api.patch(
                f"/api/v1/namespaces/{CREDS_NS}/secrets/login-0",
                {"stringData": {"username": "rotated-user", "password": new_password}},
            )
            self.tally.wait(lambda: not tracker.pending, 1800, "every copy rotated")
            total = max(tracker.done_at.values()) - started
        self.quiesce()  # let every write of the rotation finish before the next figure
        # The operator watches the credentials namespace: the fan-out starts at the change.
        return {
            "copies": len(before),
            "ocireg_total_s": total,
            "floor_replace_s": floor,
            "floor_create_s": floor_create,
            "floor_replace_seen_s": floor_seen,
            "ratio_total": total / floor,
            "ratio_seen": total / floor_seen,
        }

    def p5_credential_change(self) -> dict[str, Any]:
        """Change the password in a credentials Secret; time until the copy a user looks at
        holds it (see the module's docstring)."""
        assert self.tally is not None
        samples: list[float] = []
        everywhere: list[float] = []
        for sample in range(self.args.credential_samples):
            password = f"changed-{sample}-{time.time_ns()}"
            if self.args.tenants:
                tenant = self.sampled_tenants[sample % len(self.sampled_tenants)]
                namespace = self.names[tenant]
                self._let_in({self._tenant_user(tenant): password})  # the registry first
                secret = f"/api/v1/namespaces/{namespace}/secrets/login"
                keys = {(namespace, TENANT_REG)}
                looked_at = (namespace, TENANT_REG)
            else:
                self._let_in({"rotated-user": password})
                secret = f"/api/v1/namespaces/{CREDS_NS}/secrets/login-0"
                keys = set(self.tally.of("reg-0"))
                looked_at = (self.rng.choice(self.names), "reg-0")
            tracker = Tracker(keys, lambda _k, s, p=password: _holds_password(s, p))
            # A random pause first, so that samples do not fall in step with anything periodic.
            time.sleep(self.rng.uniform(0, 1))
            done_at = tracker.done_at
            with self.tally.tracking(tracker):
                started = time.monotonic()
                self.api.patch(secret, {"stringData": {"password": password}})
                self.tally.wait(
                    partial(contains, done_at, looked_at),
                    600,
                    f"the copy in {looked_at[0]}",
                )
                samples.append(done_at[looked_at] - started)
                self.tally.wait(partial(_all_done, tracker), 1800, "every copy rewritten")
                everywhere.append(max(done_at.values()) - started)
            self.quiesce(quiet_for=3)  # the next sample starts with nothing in flight
        return {
            **_spread(samples),
            "copies_per_change": len(keys),
            "every_copy_p50_s": statistics.median(everywhere),
            "every_copy_max_s": max(everywhere),
            "secret": "a tenant's login Secret" if self.args.tenants else "login-0 (reg-0)",
        }

    def quiesce(self, quiet_for: float = 15.0) -> float:
        """Wait until the operator has written nothing for ``quiet_for`` seconds; returns
        when (monotonic) its last write was seen."""
        last, since = _metric(self.metrics_port, "ocireg_secret_writes_total"), time.monotonic()
        while time.monotonic() - since < quiet_for:
            time.sleep(0.5)
            now = _metric(self.metrics_port, "ocireg_secret_writes_total")
            if now != last:
                last, since = now, time.monotonic()
        return since

    def apiserver_requests(self) -> Counter[str]:
        return _by_request(self.api.session.get(self.api.base + "/metrics", timeout=30).text)

    def control_plane_cpu(self) -> dict[str, float]:
        return {
            p.name: _stat(p.popen.pid)[1]
            for p in self.cluster.processes
            if p.popen is not None and p.running
        }

    def idle_minute(self, operator: bool) -> dict[str, Any]:
        """API requests and CPU over ``--idle-seconds`` with nothing changing. The benchmark's
        watch must be stopped (so none of its requests ends inside the window)."""
        assert self.tally is None or self.tally._thread is None
        seconds = self.args.idle_seconds
        cpu_before = _cpu_seconds(self.pid)[0] if operator else 0.0
        planes_before = self.control_plane_cpu()
        requests_before = self.apiserver_requests()
        started = time.monotonic()
        time.sleep(seconds)
        requests_after = self.apiserver_requests()
        elapsed = time.monotonic() - started
        planes_after = self.control_plane_cpu()
        per_minute = 60 / elapsed
        counts = _delta(requests_after, requests_before)
        result: dict[str, Any] = {
            "seconds": elapsed,
            "api_requests": sum(counts.values()),
            "api_requests_per_min": sum(counts.values()) * per_minute,
            "by_request": counts,
            "control_plane_cpu_s_per_min": {
                name: (planes_after[name] - planes_before.get(name, 0.0)) * per_minute
                for name in planes_after
            },
        }
        if operator:
            cpu_after, children = _cpu_seconds(self.pid)
            result["operator_cpu_s_per_min"] = (cpu_after - cpu_before) * per_minute
            result["operator_children"] = children
        return result

    def p3_quiet(self) -> dict[str, Any]:
        """Several resync periods with nothing changed; the first minute is the idle one."""
        assert self.hook is not None
        assert self.tally is not None
        writes_before = _metric(self.metrics_port, "ocireg_secret_writes_total")
        hook_before = sum(self.hook.calls.values())
        started = time.monotonic()
        self.tally.stop()
        seconds = self.args.idle_seconds
        if seconds:
            idle = self.results.setdefault("idle", {})
            idle.update(self.idle_minute(operator=True), operator_rss_mb=_rss_mb(self.pid))
        window = self.args.resync * self.args.quiet_periods + 5
        if seconds and self.args.quiet_periods > 1:
            # Settled: the last window, a whole resync period after the last change. The
            # first one above still holds each object's first resync since the fan-out and
            # P1 changed its namespaces, which no later period repeats.
            time.sleep(max(0.0, window - seconds - (time.monotonic() - started)))
            self.results["idle_settled"] = {
                **self.idle_minute(operator=True),
                "operator_rss_mb": _rss_mb(self.pid),
                "after_s": time.monotonic() - started - seconds,
            }
        time.sleep(max(0.0, window - (time.monotonic() - started)))
        result = {
            "resync_periods": self.args.quiet_periods,
            "secret_writes": _metric(self.metrics_port, "ocireg_secret_writes_total")
            - writes_before,
            "webhook_mints_during": sum(self.hook.calls.values()) - hook_before,
            "webhook_mints_total": sum(self.hook.calls.values()),
        }
        self.tally.start()
        return result

    def p6_restart(self) -> dict[str, Any]:
        assert self.operator is not None
        assert self.hook is not None
        assert self.tally is not None
        # The webhook-backed registry mints a new token after a restart (new data, so its
        # copies are rewritten); the static ones have nothing new to write.
        minted = len(self.tally.of(f"reg-{self.args.registries - 1}"))
        self.tally.stop()
        hook_before = sum(self.hook.calls.values())
        requests_before = self.apiserver_requests()
        self.operator.stop(timeout=120)
        started = time.monotonic()
        self.start_operator()
        # Converged: each object has done its first reconcile in this process.
        _wait(
            lambda: _metric(self.metrics_port, "ocireg_reconciles_total") >= self.objects,
            3600,
            "every object reconciled after the restart",
            1,
        )
        converged = time.monotonic() - started
        last_write = self.quiesce() - started
        writes = _metric(self.metrics_port, "ocireg_secret_writes_total")
        counts = _delta(self.apiserver_requests(), requests_before)
        secret_writes = sum(
            v for k, v in counts.items() if k.split()[0] in ("POST", "PUT", "PATCH")
            and k.split()[1] == "secrets"
        )  # fmt: skip
        self.tally.start()
        return {
            "reconciles": _reconcile_seconds(self.metrics_port),
            "converged_s": converged,
            "last_write_s": last_write,
            "writes_on_restart": writes,
            "writes_on_restart_static": max(0.0, writes - minted),
            "apiserver_secret_writes": secret_writes,
            "mints_after_restart": sum(self.hook.calls.values()) - hook_before,
            "api_requests": sum(counts.values()),
            "by_request": counts,
        }

    def run(self) -> dict[str, Any]:
        args = self.args
        self.results["parameters"] = {
            "namespaces": args.namespaces,
            "registries": args.registries,
            "tenants": len(self.tenant_names),
            "tenant_tls": args.tenant_tls if args.tenants else None,
            "concurrency": args.concurrency,
            "resync_s": args.resync,
            "admission_webhook": bool(args.admission),
            "operator_identity": "in-cluster" if args.in_cluster else "kubeconfig (admin)",
            "pull_secrets": len(self.names) * self.per_namespace,
        }
        with self.phase("control plane"):
            self.start()
            if args.in_cluster:
                self.identity = self.in_cluster_identity()
        with self.phase("namespaces"):
            self.results["namespaces_created_s"] = self.create_namespaces()
            _wait(
                lambda: self.default_accounts() >= len(self.names),
                1800,
                "default ServiceAccounts",
                2,
            )
        with self.phase("fan-out floor"):
            floor = self.fan_out_floor()
        if args.idle_seconds:
            with self.phase("idle baseline"):
                self.results["idle"] = {"baseline": self.idle_minute(operator=False)}
        with self.phase("operator start"):
            self.start_operator()
            self.tally = Tally(self.api).start()
        with self.phase("fan-out"):
            fan_out = self.converge()
        self.results["initial_fan_out_s"] = fan_out["total_s"]
        self.results["initial_fan_out"] = {
            **fan_out,
            **floor,
            "ratio": fan_out["total_s"] / floor["floor_create_s"],
            "ratio_end_state": fan_out["total_s"] / floor["floor_end_state_s"],
        }
        self.results["P4_rss_mb"] = _rss_mb(self.pid)
        self.results["P4_rss_peak_mb"] = _rss_mb(self.pid, "VmHWM")  # the fan-out included
        with self.phase("P1"):
            self.results["P1_new_namespace"] = self.p1_new_namespace()
            if args.tenants:
                self.results["P1_new_tenant"] = self.p1_new_tenant()
        with self.phase("P3 + idle"):
            self.quiesce()
            self.results["P3_quiet"] = self.p3_quiet()
        with self.phase("P2"):
            self.results["P2_rotation"] = self.p2_rotation()
        if args.credential_samples:
            with self.phase("P5"):
                self.results["P5_credential_change"] = self.p5_credential_change()
        with self.phase("P6"):
            self.results["P6_restart"] = self.p6_restart()
        self.results["P4_rss_mb_after"] = _rss_mb(self.pid)
        self.results["P4_rss_peak_mb_after"] = _rss_mb(self.pid, "VmHWM")  # since the restart
        self.results["bench_failures"] = {"watch_relists": self.tally.failures}
        self.results["phase_seconds"] = self.phases
        return self.results

    def stop(self) -> None:
        steps: list[Callable[[], object]] = [self.registries.stop, self.cluster.stop]
        for part in (self.hook, self.operator, self.tally):
            if part is not None:
                steps.insert(0, part.stop)
        for step in steps:
            try:
                step()
            except Exception as error:  # stop the rest whatever one of them does
                print(f"while stopping: {error!r}")


def table(results: dict[str, Any]) -> str:
    p1, p2, p3, p6 = (
        results["P1_new_namespace"],
        results["P2_rotation"],
        results["P3_quiet"],
        results["P6_restart"],
    )
    params, fan = results["parameters"], results["initial_fan_out"]
    setup = f"{params['namespaces']} namespaces x {params['registries']} registries"
    if params.get("tenants"):
        setup += f" + {params['tenants']} tenant OCIRegistry"
    rows = [
        ("setup", f"{setup}, concurrency {params['concurrency']}",
         "admission webhook on" if params.get("admission_webhook") else ""),
        ("initial fan-out", f"{results['initial_fan_out_s']:.1f} s for {fan['secrets']} Secrets",
         f"floor {fan['floor_create_s']:.1f} s: ratio {fan['ratio']:.2f}; the same end "
         f"state, seen by a watch {fan['floor_end_state_s']:.1f} s: "
         f"{fan['ratio_end_state']:.2f}; the "
         f"benchmark created the objects in {fan['objects_created_s']:.1f} s; mean reconcile "
         + ", ".join(f"{k} {v['mean_s']:.2f} s" for k, v in fan["reconciles"].items())),
        ("P1 new namespace -> secrets + SA", f"p50 {p1['p50_s']:.2f} s, p99 {p1['p99_s']:.2f} s",
         f"max {p1['max_s']:.2f} s over {p1['samples']}; aim p99 <= 1 s"),
    ]  # fmt: skip
    if "P1_new_tenant" in results:
        p1t = results["P1_new_tenant"]
        rows.append(
            ("P1t new tenant -> secrets + SA",
             f"p50 {p1t['p50_s']:.2f} s, p99 {p1t['p99_s']:.2f} s",
             f"max {p1t['max_s']:.2f} s over {p1t['samples']}")
        )  # fmt: skip
    rows += [
        ("P2 rotate one registry", f"{p2['ocireg_total_s']:.1f} s for {p2['copies']} copies",
         f"floor {p2['floor_replace_s']:.1f} s; ratio {p2['ratio_total']:.2f} (aim <= 1.5, "
         "from the login Secret's change to the last copy); floor seen by a watch "
         f"{p2['floor_replace_seen_s']:.1f} s: ratio {p2['ratio_seen']:.2f}"),
        ("P3 quiet resyncs", f"{p3['secret_writes']:.0f} writes in {p3['resync_periods']} periods",
         f"webhook mints during: {p3['webhook_mints_during']}, total {p3['webhook_mints_total']}"),
        ("P4 operator RSS", f"{results['P4_rss_mb']:.0f} MB",
         f"peak {results['P4_rss_peak_mb']:.0f} MB, after the run "
         f"{results['P4_rss_mb_after']:.0f} MB; aim <= 120 MB"),
    ]  # fmt: skip
    if "P5_credential_change" in results:
        p5 = results["P5_credential_change"]
        rows.append(
            ("P5 credential change -> copy", f"p50 {p5['p50_s']:.2f} s, p99 {p5['p99_s']:.2f} s",
             f"max {p5['max_s']:.2f} s over {p5['samples']} ({p5['secret']}); every copy "
             f"({p5['copies_per_change']}): p50 {p5['every_copy_p50_s']:.2f} s")
        )  # fmt: skip
    idle = results.get("idle") or {}
    if "api_requests_per_min" in idle:
        top = ", ".join(f"{k} {v}" for k, v in list(idle["by_request"].items())[:4])
        base = idle.get("baseline")
        planes = idle["control_plane_cpu_s_per_min"]
        rows += [
            ("idle API requests", f"{idle['api_requests_per_min']:.0f} per minute",
             (f"without the operator {base['api_requests_per_min']:.0f}; " if base else "")
             + f"most: {top}"),
            ("idle operator CPU", f"{idle['operator_cpu_s_per_min']:.2f} s per minute",
             f"kube-apiserver {planes.get('kube-apiserver', 0):.2f} s, etcd "
             f"{planes.get('etcd', 0):.2f} s; operator RSS {idle['operator_rss_mb']:.0f} MB"),
        ]  # fmt: skip
    settled = results.get("idle_settled")
    if settled:
        rows += [
            ("idle, settled: API requests", f"{settled['api_requests_per_min']:.0f} per minute",
             f"from {settled['after_s']:.0f} s into P3, a resync period after the last change"),
            ("idle, settled: operator CPU", f"{settled['operator_cpu_s_per_min']:.2f} s per minute",
             f"operator RSS {settled['operator_rss_mb']:.0f} MB"),
        ]  # fmt: skip
    rows.append(
        ("P6 restart -> converged", f"{p6['converged_s']:.1f} s",
         f"last write at {p6['last_write_s']:.1f} s; {p6['writes_on_restart']:.0f} writes "
         f"({p6['apiserver_secret_writes']} at the API server), "
         f"{p6['writes_on_restart_static']:.0f} by static registries; "
         f"{p6['mints_after_restart']} mints; {p6['api_requests']} requests")
    )  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:<36}  {note}" for name, value, note in rows)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument(
        "--registries", type=int, default=10, help="ClusterOCIRegistry objects (at least 2)"
    )
    parser.add_argument(
        "--tenants",
        action="store_true",
        help="every namespace also gets its own OCIRegistry (shape c)",
    )
    parser.add_argument(
        "--tenant-tls",
        choices=("ca", "skip-verify"),
        default="ca",
        help="tenants trust the registry by a CA ConfigMap in their namespace (default) or "
        "skip verification (one object fewer per tenant for the operator to read)",
    )
    parser.add_argument("--samples", type=int, default=50, help="P1 (and P1t) samples")
    parser.add_argument("--credential-samples", type=int, default=20, help="P5 samples; 0: none")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--resync", type=float, default=20.0, help="the operator's drift-repair period (its "
        "default is 300 s; shortened so that several periods fit in P3)",
    )  # fmt: skip
    parser.add_argument("--quiet-periods", type=int, default=3, help="resync periods in P3")
    parser.add_argument(
        "--idle-seconds", type=float, default=60.0, help="the idle window (0: skip the baseline)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--admission", action="store_true", help="run the operator with its admission webhook on"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable for the operator's environment (allocator trials; repeatable)",
    )
    parser.add_argument(
        "--in-cluster",
        action="store_true",
        help="start the operator as a pod does: the in-cluster identity (a token of the "
        "ServiceAccount manifests/ installs, with its RBAC and policies) instead of the admin "
        "kubeconfig; P4 is then a pod's RSS (the kubeconfig path imports 13 MB more). Root only",
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the control plane's data and logs"
    )
    return parser


def shape(*flags: str) -> argparse.Namespace:
    """A Bench's arguments as this command line would give them (every default from one
    place): for the other benchmarks that set up the same cluster."""
    return argument_parser().parse_args(list(flags))


def main() -> int:
    parser = argument_parser()
    args = parser.parse_args()
    if args.registries < 2:
        parser.error("--registries must be at least 2 (one basic, one webhook)")

    def interrupted(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below: everything stops

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    bench = Bench(args)
    ok = False
    try:
        results = bench.run()
        ok = True
    finally:
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_IGN)  # a second interrupt must not skip stopping
        bench.stop()
        if ok and not args.keep_workdir:
            shutil.rmtree(bench.workdir, ignore_errors=True)
        else:
            print(f"data and logs kept in {bench.workdir}")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(yaml.safe_dump({"json": str(args.json)}) if args.json else "", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
