"""The egress policy and the memory bound, end to end: the real operator process against small
hostile registries on 127.0.0.1. The operator is started allowing 127.0.0.1/32 only, so the
"internal service" on 127.0.0.2 (all of 127.0.0.0/8 is local on Linux) must stay out of a
tenant's reach even though its registry is allowed."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ocireg_devenv.controlplane import ControlPlane

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    condition,
    registry_object,
    wait_for,
    wait_for_reason,
)

KIND = "OCIRegistry"
INTERNAL_TEXT = "internal-service-secret-text"
POD_LIMIT = 256 * 1024 * 1024  # the shipped Deployment's memory limit


class Hostile:
    """An HTTP server on ``host`` that answers every GET with ``route(path)`` ->
    (status, headers, body) and records the paths asked for."""

    def __init__(self, route: Callable[[str], tuple[int, dict[str, str], bytes]], host: str):
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.paths.append(self.path)
                status, headers, body = route(self.path)
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *args: None  # type: ignore[method-assign] # cut by us
        self.address = f"{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile() -> Iterator[Callable[..., Hostile]]:
    started: list[Hostile] = []

    def start(route: Callable[[str], tuple[int, dict[str, str], bytes]], host: str = "127.0.0.1"):
        started.append(Hostile(route, host))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _internal(path: str) -> tuple[int, dict[str, str], bytes]:
    # A service inside the cluster network that a tenant must neither reach nor quote.
    body = {"errors": [{"code": "DENIED", "message": INTERNAL_TEXT}], "error": INTERNAL_TEXT}
    return 403, {}, json.dumps(body).encode()


def _open_registry(redirect_to: str) -> Callable[[str], tuple[int, dict[str, str], bytes]]:
    def route(path: str) -> tuple[int, dict[str, str], bytes]:
        if path.endswith("/tags/list"):
            return 200, {}, b'{"name": "team/chart", "tags": ["1.0.0"]}'
        if "/manifests/" in path:
            return 307, {"Location": f"http://{redirect_to}/storage/manifest"}, b""
        return 200, {}, b"{}"

    return route


def _bearer_registry(realm_host: str) -> Callable[[str], tuple[int, dict[str, str], bytes]]:
    challenge = f'Bearer realm="http://{realm_host}/token",service="hostile"'

    def route(path: str) -> tuple[int, dict[str, str], bytes]:
        return 401, {"WWW-Authenticate": challenge}, b'{"errors": [{"code": "UNAUTHORIZED"}]}'

    return route


def test_a_tenant_cannot_reach_an_internal_service_through_its_registry(
    cluster: ControlPlane, crds: None, run_operator, namespace: str, hostile
) -> None:
    internal = hostile(_internal, host="127.0.0.2")
    bearer = hostile(_bearer_registry(internal.address))
    redirecting = hostile(_open_registry(internal.address))
    run_operator(*ALLOW_LOCAL_REGISTRIES)
    anonymous = {"auth": {"anonymous": {}}, "tls": {"insecure": True}}
    apply(
        cluster,
        # The registry names a token realm on the internal address.
        registry_object(KIND, "realm", {"server": bearer.address, **anonymous}, namespace),
        # The registry itself is the internal address.
        registry_object(KIND, "internal", {"server": internal.address, **anonymous}, namespace),
        # The registry redirects a manifest to the internal address.
        registry_object(
            KIND,
            "redirect",
            {
                "server": redirecting.address,
                **anonymous,
                "charts": {"repositories": ["team/chart"]},
            },
            namespace,
        ),
    )
    realm = wait_for_reason(cluster, KIND, "realm", "EgressNotAllowed", namespace)
    assert f"the token server {internal.address.split(':')[0]}" in realm["message"]
    assert "--egress-allowed-cidr" in realm["message"]
    itself = wait_for_reason(cluster, KIND, "internal", "EgressNotAllowed", namespace)
    assert "registry 127.0.0.2 is a non-public address" in itself["message"]
    for name in ("realm", "internal"):
        assert condition(cluster, KIND, name, "Stalled", namespace)["status"] == "True", name
    charts = wait_for_reason(
        cluster, KIND, "redirect", "EgressNotAllowed", namespace, "ChartsSynced", 90
    )
    assert "the redirect target 127.0.0.2" in charts["message"]
    # The redirecting registry itself is allowed, and was used.
    assert condition(cluster, KIND, "redirect", "Ready", namespace)["status"] == "True"
    assert any(p.endswith("/tags/list") for p in redirecting.paths)
    assert internal.paths == [], "a tenant's request reached the internal service"
    shown = json.dumps(cluster.get_json("ociregistries", "-n", namespace))
    assert INTERNAL_TEXT not in shown

    # A platform team's ClusterOCIRegistry is not restricted: the same registry reaches it.
    apply(
        cluster,
        registry_object(
            "ClusterOCIRegistry",
            f"platform-{namespace[-6:]}",
            {
                "server": bearer.address,
                **anonymous,
                "targets": {"namespaceSelector": {"matchLabels": {"never": namespace[-6:]}}},
            },
        ),
    )
    wait_for(lambda: internal.paths, 60, "the cluster object's token request")
    cluster.kubectl("delete", "clusterociregistry", f"platform-{namespace[-6:]}", "--wait=false")


# --------------------------------------------------------------------------- memory


def _tag_page(prefix: str, count: int) -> bytes:
    return json.dumps(
        {"name": prefix, "tags": [f"{prefix}-{i:07d}" for i in range(count)]}
    ).encode()


def _huge_registry(pages: int) -> Callable[[str], tuple[int, dict[str, str], bytes]]:
    """Tag lists and a catalog whose every page is 7 MiB of short distinct names (~550,000,
    under the old 32 MiB page cap), with a next link for ``pages`` pages; and a repository
    whose pages of 60,000 tags each are small but add up; and eight repositories read at once
    (one chart sync) whose pages of 60,000 long tags are 7.4 MB each."""

    def route(path: str) -> tuple[int, dict[str, str], bytes]:
        base, _, query = path.partition("?")
        page = int(query.rsplit("=", 1)[-1]) if "page=" in query else 0
        link = {"Link": f'<{base}?page={page + 1}>; rel="next"'} if page + 1 < pages else {}
        if base == "/v2/_catalog":
            names = [f"r{page}/c{i:07d}" for i in range(480_000)]
            return 200, link, json.dumps({"repositories": names}).encode()
        if base == "/v2/huge/tags/list":
            return 200, link, _tag_page(f"p{page}", 550_000)
        if base == "/v2/many/tags/list":
            return 200, link, _tag_page(f"m{page}", 60_000)
        if base.startswith("/v2/wide"):
            # 60,000 tags of 120 characters: 7.4 MB a page, parsed (under every per-page cap).
            return 200, link, _tag_page(f"w{page}-" + "x" * 110, 60_000)
        return 200, {}, b"{}"

    return route


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_registry_serving_huge_listings_cannot_take_the_operator_over_its_pod_limit(
    cluster: ControlPlane, crds: None, run_operator, namespace: str, hostile
) -> None:
    registry = hostile(_huge_registry(pages=12))
    operator = run_operator(*ALLOW_LOCAL_REGISTRIES)
    pid = operator.process.popen.pid
    at_start = _peak_rss(pid)
    anonymous = {"server": registry.address, "auth": {"anonymous": {}}, "tls": {"insecure": True}}
    apply(
        cluster,
        registry_object(
            KIND,
            "tags",
            {**anonymous, "charts": {"repositories": ["huge", "many"]}},
            namespace,
        ),
        registry_object(KIND, "catalog", {**anonymous, "charts": {"discover": True}}, namespace),
        registry_object(
            KIND,
            "wide",
            {**anonymous, "charts": {"repositories": [f"wide{i}" for i in range(8)]}},
            namespace,
        ),
    )

    def settled() -> bool:
        # Either both syncs ended, or the process already went over the limit (then no need
        # to wait for what an OOM kill would have ended in a pod).
        if _peak_rss(pid) >= POD_LIMIT:
            return True
        names = ("tags", "catalog", "wide")
        return all(condition(cluster, KIND, n, "ChartsSynced", namespace) for n in names)

    wait_for(settled, 180, "both objects' ChartsSynced conditions")
    peak = _peak_rss(pid)
    print(f"operator VmHWM: {at_start / 2**20:.0f} MiB at start, {peak / 2**20:.0f} MiB after")
    assert peak < POD_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"

    tags = condition(cluster, KIND, "tags", "ChartsSynced", namespace)
    assert tags["reason"] == "AnswerTooLarge", tags
    assert "the tag list of huge" in tags["message"]
    assert "the tag list of many" in tags["message"]
    assert "more than 100000 tags" in tags["message"]
    catalog = condition(cluster, KIND, "catalog", "ChartsSynced", namespace)
    assert catalog["reason"] == "AnswerTooLarge", catalog
    assert "the catalog" in catalog["message"]
    assert "charts.repositories" in catalog["message"]
    # The listings stopped at the first page that went over (many: the second), not after 12.
    assert sum("/v2/huge/tags/list" in p for p in registry.paths) == 1
    assert sum("/v2/many/tags/list" in p for p in registry.paths) == 2
    assert sum("/v2/_catalog" in p for p in registry.paths) == 1
    wide = condition(cluster, KIND, "wide", "ChartsSynced", namespace)
    assert wide["reason"] == "AnswerTooLarge", wide
    # The credentials side is unaffected: the registry answers /v2/ and stays Ready.
    assert condition(cluster, KIND, "tags", "Ready", namespace)["status"] == "True"
