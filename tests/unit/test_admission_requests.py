"""What the admission webhook's HTTPS server answers (issue 14, point 9d): anyone who reaches
the pod port can send it a request, so only a well-formed AdmissionReview v1 for a
ServiceAccount CREATE reaches the handler, and bodies over 256 KiB are refused unread.

A real aiohttp server on 127.0.0.1 (plain HTTP: TLS is tested in test_admission.py and e2e)
running AdmissionServer's request handling, with a recording stand-in for kopf's admission
function behind it."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from ocireg import admission

LIMIT = 256 * 1024
MARKER = "do-not-echo-7f3a"


def review(**request: Any) -> dict[str, Any]:
    """An AdmissionReview as kube-apiserver sends it for `kubectl create serviceaccount`."""
    base: dict[str, Any] = {
        "uid": "0df28fbd-5f5f-4b1e-9bd6-4a4e9c2b9e11",
        "kind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
        "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
        "requestKind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
        "name": "builder",
        "namespace": "team-a",
        "operation": "CREATE",
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "builder", "namespace": "team-a"},
        },
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    base.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": base}


Post = Callable[..., Awaitable[tuple[int, str]]]


async def _served(calls: list[dict[str, Any]]) -> AsyncIterator[Post]:
    async def fn(data: dict[str, Any], **_: Any) -> dict[str, Any]:
        calls.append(data)
        uid = data["request"]["uid"]
        return {**data, "response": {"uid": uid, "allowed": True}}

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return await admission.AdmissionServer._serve(fn, request)

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.post("/{id:.*}", handle)])
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:

        async def post(path: str = "/pull-secrets", **kwargs: Any) -> tuple[int, str]:
            async with session.post(f"http://127.0.0.1:{port}{path}", **kwargs) as answer:
                return answer.status, f"{answer.reason} {await answer.text()}"

        yield post
    await runner.cleanup()


def run(test: Callable[[Post, list[dict[str, Any]]], Awaitable[None]]) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    async def main() -> None:
        async for post in _served(calls):
            await test(post, calls)

    asyncio.run(main())
    return calls


def test_a_service_account_creation_is_served() -> None:
    async def test(post: Post, calls: list[dict[str, Any]]) -> None:
        status, text = await post(json=review())
        assert status == 200, text
        assert '"allowed": true' in text

    assert len(run(test)) == 1


def _pod() -> dict[str, Any]:
    body = review(
        kind={"group": "", "version": "v1", "kind": "Pod"},
        resource={"group": "", "version": "v1", "resource": "pods"},
    )
    body["request"]["object"]["kind"] = "Pod"
    return body


def _with(path: str, value: Any) -> dict[str, Any]:
    body = review()
    target = body
    *parents, last = path.split(".")
    for key in parents:
        target = target[key]
    target[last] = value
    return body


@pytest.mark.parametrize(
    ("label", "body"),
    [
        ("a Pod", _pod()),
        ("an UPDATE", _with("request.operation", "UPDATE")),
        ("a DELETE", _with("request.operation", "DELETE")),
        ("a subresource", _with("request.subResource", "token")),
        ("v1beta1", _with("apiVersion", "admission.k8s.io/v1beta1")),
        ("not a review", _with("kind", "Status")),
        ("no request", _with("request", None)),
        ("no uid", _with("request.uid", "")),
        ("no namespace", _with("request.namespace", "")),
        ("no userInfo", _with("request.userInfo", None)),
        ("another namespace's object", _with("request.object.metadata.namespace", "team-b")),
        ("a list", [review()]),
    ],
)
def test_anything_else_is_refused_without_reaching_the_handler(label: str, body: Any) -> None:
    hostile = copy.deepcopy(body)
    if isinstance(hostile, dict) and isinstance(hostile.get("request"), dict):
        hostile["request"]["name"] = MARKER

    async def test(post: Post, calls: list[dict[str, Any]]) -> None:
        status, text = await post(json=hostile)
        assert status == 400, (label, status, text)
        assert MARKER not in text

    assert run(test) == [], label


def test_another_path_and_a_body_that_is_not_json_are_refused() -> None:
    async def test(post: Post, calls: list[dict[str, Any]]) -> None:
        status, _ = await post("/other", json=review())
        assert status == 400
        status, _ = await post(data=b"{not json", headers={"Content-Type": "application/json"})
        assert status == 400

    assert run(test) == []


def test_a_body_over_the_cap_is_refused_unread_with_or_without_a_length() -> None:
    big = review()
    big["request"]["object"]["metadata"]["annotations"] = {"pad": "x" * LIMIT}
    raw = json.dumps(big).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 16 * 1024):
            yield raw[start : start + 16 * 1024]

    async def test(post: Post, calls: list[dict[str, Any]]) -> None:
        status, _ = await post(data=raw, headers={"Content-Type": "application/json"})
        assert status == 413
        status, _ = await post(data=chunks(), headers={"Content-Type": "application/json"})
        assert status == 413
        # Just under the cap is served.
        fits = review()
        pad = LIMIT - len(json.dumps(fits)) - 200
        fits["request"]["object"]["metadata"]["annotations"] = {"pad": "x" * pad}
        status, text = await post(json=fits)
        assert status == 200, text

    assert len(run(test)) == 1
