"""The worker pools' shares (workers.py): no namespace or object can hold every worker."""

from __future__ import annotations

import inspect
import threading
import time
from types import SimpleNamespace

import kopf
import pytest

from ocireg.cli import build_parser, config_from_args
from ocireg.pullsecrets.plan import RegistryRef
from ocireg.settings import OperatorConfig, PoolSizes
from ocireg.workers import FairPool, Pools, ShareQueue, group_of


def _drain(queue: ShareQueue[str]) -> list[str]:
    """Pop everything that may start now (without finishing any of it)."""
    started = []
    while (job := queue.pop()) is not None:
        started.append(job[2])
    return started


def test_a_namespace_holds_at_most_its_share_and_others_still_start() -> None:
    queue: ShareQueue[str] = ShareQueue(share=2)
    for i in range(12):
        queue.push(f"slow-{i}", "hostile", f"slow-{i}")
    queue.push("ok", "team-b", "ok")
    started = _drain(queue)
    assert sorted(started) == ["ok", "slow-0", "slow-1"]
    assert queue.running("hostile") == 2
    assert queue.waiting() == 10  # the rest wait for their own namespace's share


def test_queued_work_waits_for_its_own_share_and_starts_when_one_ends() -> None:
    queue: ShareQueue[str] = ShareQueue(share=1)
    queue.push("a1", "a", "a1")
    queue.push("a2", "a", "a2")
    assert _drain(queue) == ["a1"]
    queue.done("a1", "a")
    assert _drain(queue) == ["a2"]
    assert queue.pop() is None


def test_turns_go_round_robin_over_namespaces_not_first_come() -> None:
    queue: ShareQueue[str] = ShareQueue(share=1)
    for i in range(5):
        queue.push(f"a{i}", "a", f"a{i}")
    queue.push("b0", "b", "b0")
    order = []
    for _ in range(6):
        key, group, item = queue.pop() or pytest.fail("nothing to start")
        order.append(item)
        queue.done(key, group)
    # b's one job goes second, not after a's whole backlog.
    assert order == ["a0", "b0", "a1", "a2", "a3", "a4"]


def test_one_object_runs_once_at_a_time() -> None:
    queue: ShareQueue[str] = ShareQueue(share=4)
    queue.push("obj", "ns", "tick")
    queue.push("obj", "ns", "poke")
    queue.push("other", "ns", "other")
    assert _drain(queue) == ["tick", "other"]  # the poke waits for the tick, not the share
    queue.done("obj", "ns")
    assert _drain(queue) == ["poke"]


def test_tenant_namespaces_and_cluster_objects_are_separate_groups() -> None:
    assert group_of(RegistryRef("OCIRegistry", "a", "team")) == group_of(
        RegistryRef("OCIRegistry", "b", "team")
    )
    assert group_of(RegistryRef("OCIRegistry", "a", "team")) != group_of(
        RegistryRef("OCIRegistry", "a", "other")
    )
    # A cluster object named like a namespace is not in that namespace's share.
    assert group_of(RegistryRef("ClusterOCIRegistry", "team")) != group_of(
        RegistryRef("OCIRegistry", "x", "team")
    )


class Stuck:
    """Jobs that hang (a registry that never finishes answering) until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.started += 1
        self.release.wait(30)
        return "stuck"


@pytest.mark.parametrize("namespaces", [1, 12], ids=["12-in-one-namespace", "12-namespaces"])
def test_twelve_stuck_objects_leave_the_pool_to_others(namespaces: int) -> None:
    stuck = Stuck()
    pools = Pools(PoolSizes())  # the defaults
    try:
        for i in range(12):
            ref = RegistryRef("OCIRegistry", f"slow-{i}", f"hostile-{i % namespaces}")
            pools.reconcile(ref, stuck)
        other = pools.reconcile(RegistryRef("OCIRegistry", "ok", "team-b"), lambda: "done")
        assert other.result(timeout=10) == "done"
        # The same holds for a platform team's object: a pool of its own.
        cluster = pools.reconcile(RegistryRef("ClusterOCIRegistry", "corp"), lambda: "done")
        assert cluster.result(timeout=10) == "done"
        expected = min(12, namespaces * PoolSizes().namespace_share)
        deadline = time.monotonic() + 10
        while stuck.started < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # and no more than that start
        assert stuck.started == expected
    finally:
        stuck.release.set()
        pools.stop()


def test_with_one_shared_pool_the_same_objects_starve_everyone() -> None:
    """The contrast that makes the test above meaningful: without shares (share = workers,
    as kopf's single executor was), 12 stuck objects hold every worker."""
    stuck = Stuck()
    pool = FairPool("test-unshared", workers=6, share=6)
    try:
        for i in range(12):
            pool.submit(f"slow-{i}", "hostile", stuck)
        deadline = time.monotonic() + 10
        while stuck.started < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stuck.started == 6  # every thread is held
        other = pool.submit("ok", "team-b", lambda: "done")
        time.sleep(0.5)
        assert not other.done()
        stuck.release.set()
        assert other.result(timeout=10) == "done"
    finally:
        stuck.release.set()
        pool.stop()


def test_jobs_submitted_together_get_threads_while_the_pool_has_room() -> None:
    """One idle thread and two jobs at once (the first one hangs): the second gets a thread
    of its own instead of waiting behind the first."""
    stuck = Stuck()
    pool = FairPool("test-burst", workers=4, share=4)
    try:
        pool.submit("warm", "ns", lambda: None).result(timeout=10)  # one thread, now idle
        with pool._cond:  # both submitted before the idle thread can wake
            pool.submit("slow", "ns", stuck)
            quick = pool.submit("quick", "ns", lambda: "done")
        assert quick.result(timeout=10) == "done"
    finally:
        stuck.release.set()
        pool.stop()


def test_pokes_arriving_before_their_run_starts_share_it() -> None:
    pool = FairPool("test-poke", workers=1, share=1)
    gate = threading.Event()
    runs = []
    try:
        pool.submit("blocker", "ns", lambda: gate.wait(10))
        first = pool.submit("obj", "ns", lambda: runs.append(1), coalesce=True)
        second = pool.submit("obj", "ns", lambda: runs.append(2), coalesce=True)
        assert first is second
        gate.set()
        first.result(timeout=10)
        again = pool.submit("obj", "ns", lambda: runs.append(3), coalesce=True)
        again.result(timeout=10)
        assert runs == [1, 3]  # a poke after the run started runs again
    finally:
        gate.set()
        pool.stop()


def test_a_failing_job_reports_its_error_and_frees_its_share() -> None:
    pool = FairPool("test-fail", workers=1, share=1)
    try:

        def boom() -> None:
            raise RuntimeError("registry said no")

        failed = pool.submit("obj", "ns", boom)
        with pytest.raises(RuntimeError):
            failed.result(timeout=10)
        assert pool.submit("obj", "ns", lambda: "next").result(timeout=10) == "next"
    finally:
        pool.stop()


def test_pool_sizes_are_flags_with_documented_defaults() -> None:
    def config(*argv: str):
        return config_from_args(build_parser().parse_args(["run", *argv]))

    assert config().pools == PoolSizes()
    sizes = config(
        "--reconcile-workers",
        "32",
        "--cluster-reconcile-workers",
        "12",
        "--chart-workers",
        "6",
        "--cluster-chart-workers",
        "3",
        "--namespace-workers",
        "1",
        "--kopf-workers",
        "2",
    ).pools
    assert sizes == PoolSizes(32, 12, 6, 3, 1, 2)
    assert config("--namespace-workers", "0").pools.namespace_share == 1


def test_no_handler_of_an_object_runs_on_kopfs_executor() -> None:
    """Every handler kopf calls for a registry object is async and waits on the pools; a sync
    one would run on kopf's executor, shared by every object."""
    import ocireg.charts.handlers  # registers the chart handlers
    import ocireg.pullsecrets.handlers  # noqa: F401 - registers the pull secret handlers

    registry = kopf.get_default_registry()
    handlers = [
        handler
        for kind in (registry._changing, registry._spawning, registry._watching)
        for handler in kind.get_all_handlers()
    ]
    assert {h.id.split("/")[0] for h in handlers} >= {"on_change", "on_delete", "charts-cleanup"}
    assert [h.id for h in handlers if not inspect.iscoroutinefunction(h.fn)] == []


def test_kopf_keeps_no_body_of_a_registry_object() -> None:
    """kopf keeps a copy of the whole body of every object of a resource that has a timer or
    a daemon (its spawning handlers), whatever their filters say: about 24 KB per tenant
    object. ocireg schedules by its own alarms, so it registers none."""
    import ocireg.charts.handlers
    import ocireg.pullsecrets.handlers  # noqa: F401

    registry = kopf.get_default_registry()
    assert [h.id for h in registry._spawning.get_all_handlers()] == []


def test_kopfs_executor_size_is_set_and_the_pools_made_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ocireg.pullsecrets import handlers, runtime

    monkeypatch.setattr(runtime, "load_config", lambda: None)
    kept: list[int] = []
    monkeypatch.setattr(
        runtime, "Kube", lambda connections=0: kept.append(connections) or SimpleNamespace(api=None)
    )
    monkeypatch.setattr(runtime.seal, "load_key", lambda *args: None)  # no API to keep it in
    settings = kopf.OperatorSettings()
    sizes = PoolSizes(tenant_reconciles=7, namespace_share=3, kopf=3)
    memo = kopf.Memo(config=OperatorConfig(pools=sizes, concurrency=12))
    handlers.configure(settings=settings, memo=memo)
    try:
        assert settings.execution.max_workers == 3
        # The API client keeps a connection for each namespace job and a few more.
        assert kept == [12 + runtime.API_CONNECTIONS_BESIDE_JOBS]
        # Events are kube.events' alone: kopf posts none (its own went to the wrong place).
        assert settings.posting.enabled is False
        pools = runtime.runtime(memo).pools
        assert pools.tenant_reconciles.workers == 7
        assert pools.tenant_reconciles.share == 3
        assert pools.tenant_charts.share == 3
    finally:
        runtime.runtime(memo).pools.stop()
        runtime.runtime(memo).events.stop()


def test_alarms_fire_once_at_their_latest_time_and_cancel() -> None:
    from ocireg.workers import Alarms

    fired: list[str] = []
    done = threading.Event()

    def fire(key: str) -> None:
        fired.append(key)
        if key == "last":
            done.set()

    alarms: Alarms[str] = Alarms(fire)
    try:
        alarms.set("a", 0.3)
        alarms.set("a", 0.05)  # replaced: fires once, at the new time
        alarms.set("b", 0.1)
        alarms.cancel("b")
        alarms.set("last", 0.4)
        assert done.wait(5)
        time.sleep(0.1)
        assert fired == ["a", "last"]
        assert len(alarms) == 0
        # Replaced alarms do not pile up in the heap.
        for i in range(1000):
            alarms.set("busy", 60 + i)
        assert len(alarms._heap) < 200
        assert alarms.due_in("busy") == pytest.approx(60 + 999, abs=1)
    finally:
        alarms.stop()
