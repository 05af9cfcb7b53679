"""What a list of the API costs when tenants fatten what is listed: any tenant can put the
managed-by label on her own Secrets (1 MiB of data each), which the watch-fed index lists
cluster-wide. A local HTTP server stands in for the API server and answers as many 1 MiB
Secrets per page as asked (`limit`); the operator's own list path (kube.CoreV1 through the
kubernetes ApiClient, WatchSource pages) reads them all, with a bounded peak."""

from __future__ import annotations

import base64
import json
import logging
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import kubernetes
import pytest

from ocireg.kube import client as kube

MIB = 1024 * 1024
SECRETS = 64  # the review's probe: 64 Secrets of 1 MiB peaked at 197 MiB in one page


def _secret(i: int, size: int) -> bytes:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"fat-{i}",
            "namespace": "tenant",
            "uid": f"u{i}",
            "resourceVersion": str(i + 1),
            "labels": {"app.kubernetes.io/managed-by": "ocireg"},
        },
        "type": "Opaque",
        "data": {"blob": base64.b64encode(b"x" * size).decode()},
    }
    return json.dumps(body).encode()


class _Server:
    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.items = [_secret(i, size) for i in range(count)]  # built before measuring
        self.limits: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                limit = int(query.get("limit", [str(server.count)])[0])
                start = int(query.get("continue", ["0"])[0])
                server.limits.append(limit)
                end = min(server.count, start + limit)
                more = {"continue": str(end)} if end < server.count else {}
                head = json.dumps(
                    {"kind": "SecretList", "apiVersion": "v1",
                     "metadata": {"resourceVersion": "99", **more}}
                ).encode()[:-1] + b', "items": ['  # fmt: skip
                # Written item by item: the server allocates nothing the peak would count.
                parts = [head]
                for n, item in enumerate(server.items[start:end]):
                    parts += [b","] if n else []
                    parts.append(item)
                parts.append(b"]}")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(sum(len(p) for p in parts)))
                self.end_headers()
                try:
                    for part in parts:
                        self.wfile.write(part)
                except ConnectionError:  # the client stopped reading: what the cap does
                    pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()

    def core(self) -> kube.CoreV1:
        configuration = kubernetes.client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.http.server_address[1]}"
        return kube.CoreV1(kubernetes.client.ApiClient(configuration))


@pytest.fixture
def fat() -> Iterator[_Server]:
    with _Server(SECRETS, MIB) as server:
        yield server


def _peak_of(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_index_lists_64_fat_secrets_within_a_bounded_peak(
    fat: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    core = fat.core()
    source = kube.WatchSource(core.list_secret_for_all_namespaces, kube.PAGES["secrets"])

    def list_them() -> int:
        count, token = 0, None
        while True:
            page = source.page(token)
            count += len(page["items"])
            del page
            token = None if count >= SECRETS else str(count)
            if token is None:
                return count

    with caplog.at_level(logging.WARNING, logger="ocireg.kube.client"):
        count, peak = _peak_of(list_them)
    print(f"peak {peak / MIB:.1f} MiB for {SECRETS} Secrets of 1 MiB, pages {fat.limits}")
    assert count == SECRETS
    # Pages of 400 (of 25, ...) Secrets of 1.33 MiB (base64) are more than the 8 MiB answer
    # cap: asked for again with half as many until a page fits (3: 4.2 MiB), said in the log,
    # and kept.
    assert fat.limits[:8] == [400, 200, 100, 50, 25, 12, 6, 3], fat.limits
    assert set(fat.limits[8:]) == {3}, fat.limits
    assert source.limit == 3
    assert "too large; asking for 3 at a time" in caplog.text
    # One page of 500 (the old PAGE) read all 64 at once: ~200 MiB.
    assert peak < 32 * MIB, peak / MIB


def test_one_answer_past_the_cap_is_refused_unread_with_a_clear_error(fat: _Server) -> None:
    core = kube.CoreV1(fat.core().api, max_answer_bytes=MIB // 2)  # one Secret is more
    source = kube.WatchSource(core.list_secret_for_all_namespaces, 2)
    with pytest.raises(kube.AnswerTooLarge) as raised:
        source.page(None)
    assert raised.value.reason == "APIAnswerTooLarge"
    assert "the API's answer to GET /api/v1/secrets was more than 0.5 MiB" in str(raised.value)
    assert fat.limits == [2, 1]
    # A list of every page, as the cleanup reads it, is bounded the same way.
    with _Server(20, 100_000) as small:
        items = kube.list_all(small.core().list_secret_for_all_namespaces, kube.PAGES["secrets"])
        assert len(items) == 20
        assert small.limits == [kube.PAGES["secrets"]]


def test_the_watch_sources_still_list_and_watch() -> None:
    # Every source the index starts has both halves of index.Source.
    api = kubernetes.client.ApiClient(kubernetes.client.Configuration())
    for kind in ("secrets", "serviceaccounts", "namespaces"):
        source = kube.Kube(api).watch_source(kind)
        assert callable(source.page), kind
        assert callable(source.watch), kind
        assert source.limit == kube.PAGES[kind]
    for kind in ("secrets", "configmaps"):
        source = kube.Kube(api).metadata_source(kind, "a!=b")
        assert source.limit == kube.METADATA_PAGE
        assert source.list_accept == {"accept": kube.PARTIAL_METADATA_LIST}
        assert source.watch_accept == {"accept": kube.PARTIAL_METADATA}
