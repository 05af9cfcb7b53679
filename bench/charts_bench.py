"""Chart sync benchmark: 50 repositories x 20 chart versions in a local registry, a first
sync, then an unchanged resync. Prints the time and registry requests per repository.

    .venv/bin/python bench/charts_bench.py [--repositories 50] [--versions 20] [--registry basic]
    .venv/bin/python bench/charts_bench.py --large-index 400   # index.yaml building only

Charts are pushed through the distribution API directly (helm-format manifests, config blobs
and chart archives, as `helm push` writes them): pushing 1000 charts with the helm CLI would
take minutes and measure helm. The aim: the resync in <= 10 s at about 1 request per
repository.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from ocireg.api.charts import Charts
from ocireg.charts.helm_index import IndexedVersion, build_index
from ocireg.charts.metadata import HELM_CHART_LAYER, HELM_CONFIG, chart_metadata
from ocireg.charts.sync import sync_charts
from ocireg.oci import RegistryClient, RegistryCredentials, TLSOptions
from ocireg_devenv.registries import LocalRegistries, RegistryServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _archive(name: str, version: str) -> bytes:
    buffer = io.BytesIO()
    chart_yaml = f"apiVersion: v2\nname: {name}\nversion: {version}\n".encode()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"{name}/Chart.yaml")
        info.size = len(chart_yaml)
        tar.addfile(info, io.BytesIO(chart_yaml))
    return buffer.getvalue()


class Pusher:
    """Pushes helm-format chart artifacts through the distribution API."""

    def __init__(self, server: RegistryServer, ca_file: Path, token_realm: str | None) -> None:
        self.server = server
        self.session = requests.Session()
        # verify= per request: REQUESTS_CA_BUNDLE in the environment overrides a session's.
        self.verify = str(ca_file)
        self.auth = (server.username, server.password)
        self.token_realm = token_realm
        self.tokens: dict[str, str] = {}

    def _headers(self, repository: str) -> dict[str, str]:
        if self.token_realm is None:
            return {}
        if repository not in self.tokens:
            answer = self.session.get(
                self.token_realm,
                params={"service": self.server.host, "scope": f"repository:{repository}:pull,push"},
                auth=self.auth,
                timeout=30,
                verify=self.verify,
            )
            answer.raise_for_status()
            self.tokens[repository] = answer.json()["token"]
        return {"Authorization": f"Bearer {self.tokens[repository]}"}

    def _request(
        self, method: str, url: str, repository: str, **kwargs: object
    ) -> requests.Response:
        auth = None if self.token_realm else self.auth
        headers = {**self._headers(repository), **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        answer = self.session.request(
            method, url, auth=auth, headers=headers, timeout=30, verify=self.verify, **kwargs
        )  # type: ignore[arg-type]
        answer.raise_for_status()
        return answer

    def blob(self, repository: str, data: bytes) -> str:
        digest = _digest(data)
        base = f"{self.server.url}/v2/{repository}/blobs/uploads/"
        started = self._request("POST", base, repository)
        location = requests.compat.urljoin(base, started.headers["Location"])
        joiner = "&" if "?" in location else "?"
        self._request(
            "PUT",
            f"{location}{joiner}digest={digest}",
            repository,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return digest

    def chart(self, repository: str, name: str, version: str) -> None:
        config = json.dumps(
            {
                "apiVersion": "v2",
                "name": name,
                "version": version,
                "appVersion": version,
                "description": f"{name} benchmark chart",
                "type": "application",
            }
        ).encode()
        archive = _archive(name, version)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": HELM_CONFIG,
                "digest": self.blob(repository, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": HELM_CHART_LAYER,
                    "digest": self.blob(repository, archive),
                    "size": len(archive),
                }
            ],
            "annotations": {"org.opencontainers.image.created": "2025-01-01T00:00:00Z"},
        }
        self._request(
            "PUT",
            f"{self.server.url}/v2/{repository}/manifests/{version.replace('+', '_')}",
            repository,
            data=json.dumps(manifest).encode(),
            headers={"Content-Type": OCI_MANIFEST},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=50)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--registry", choices=["basic", "token"], default="basic")
    parser.add_argument(
        "--large-index",
        type=int,
        metavar="N",
        help="only build index.yaml for N versions with the largest metadata sync accepts",
    )
    args = parser.parse_args()
    if args.large_index:
        large_index(args.large_index)
        return

    with tempfile.TemporaryDirectory(prefix="ocireg-bench-") as workdir:
        local = LocalRegistries(Path(workdir))
        local.start(kinds=(args.registry,))
        try:
            run(local, args.registry, args.repositories, args.versions)
        finally:
            local.stop()


def large_index(n: int) -> None:
    """index.yaml for n versions of one chart whose metadata is as large as chart_metadata
    keeps (50 dependencies of five 500-character fields, 20 keywords, long texts)."""
    words = " ".join(["word"] * 300)
    dependencies = [
        {f: f"{f}-{words}"[:500] for f in ("name", "version", "repository", "condition", "alias")}
        for _ in range(50)
    ]
    raw = {"apiVersion": "v2", "name": "big", "description": words, "keywords": ["k" * 64] * 20}
    versions = [
        IndexedVersion(
            "charts/big",
            f"1.0.{i}",
            f"1.0.{i}",
            "sha256:" + f"{i:064x}",
            "2025-01-01T00:00:00Z",
            chart_metadata(
                json.dumps({**raw, "version": f"1.0.{i}", "dependencies": dependencies}).encode()
            ),
        )
        for i in range(n)
    ]
    started = time.monotonic()
    cpu = time.process_time()
    index = build_index(versions, "registry.example.com")
    text = index.text("2025-01-01T00:00:00Z")
    print(
        f"index.yaml of {n} large versions: {time.monotonic() - started:.2f} s "
        f"({time.process_time() - cpu:.2f} s CPU), {len(text.encode())} bytes, "
        f"{sum(len(r) for r in index.document['entries'].values())} listed, "
        f"{index.dropped} dropped, {len(getattr(index, 'trimmed', ()))} cut"
    )


def run(local: LocalRegistries, kind: str, repositories: int, versions: int) -> None:
    server = local.servers[kind]
    realm = local.token_server.realm if kind == "token" and local.token_server else None
    pusher = Pusher(server, local.ca_file, realm)
    jobs = [
        (f"charts/chart{r:03}", f"chart{r:03}", f"1.{v}.0" + ("+build.1" if v % 5 == 0 else ""))
        for r in range(repositories)
        for v in range(versions)
    ]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda job: pusher.chart(*job), jobs))
    print(f"pushed {len(jobs)} charts in {time.monotonic() - started:.1f} s ({kind} registry)")

    spec = Charts.model_validate(
        {
            "repositories": [f"charts/chart{r:03}" for r in range(repositories)],
            "versions": {"keep": versions},
        }
    )
    credentials = RegistryCredentials(server.username, server.password)
    tls = TLSOptions(ca_bundle=local.ca_file.read_text())
    # One client for both syncs, as the operator keeps one per registry object.
    with RegistryClient(server.host, credentials, tls) as client:
        figures = []
        known: dict = {}
        for label in ("first sync", "unchanged resync"):
            before = client.request_count
            started = time.monotonic()
            result = sync_charts(client, None, spec, known)
            index = build_index([v for s in result.repos.values() for v in s.versions], server.host)
            elapsed = time.monotonic() - started
            requests_made = client.request_count - before
            indexed = sum(len(rows) for rows in index.document["entries"].values())
            errors = sum(1 for s in result.repos.values() if s.error)
            figures.append((label, elapsed, requests_made, indexed, errors))
            known = result.repos
    print(f"{'':18}{'seconds':>9}{'requests':>10}{'per repo':>10}{'versions':>10}{'errors':>8}")
    for label, elapsed, requests_made, indexed, errors in figures:
        print(
            f"{label:18}{elapsed:9.2f}{requests_made:10d}{requests_made / repositories:10.2f}"
            f"{indexed:10d}{errors:8d}"
        )
    _, resync_seconds, resync_requests, _, _ = figures[1]
    verdict = "met" if resync_seconds <= 10 and resync_requests / repositories <= 1.5 else "MISSED"
    print(f"aim (resync <= 10 s, about 1 request per repository): {verdict}")


if __name__ == "__main__":
    main()
