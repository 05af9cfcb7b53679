"""A tenant fattens what the watch-fed index lists, on the real API server: she labels her own
Secrets app.kubernetes.io/managed-by=ocireg (the index watches that label cluster-wide) and
fills each with close to the most a Secret may hold. The index's own list (kube.watch_source,
index.Watcher._list, index.Store) reads them all with a bounded peak, asking for smaller pages
when one is past the answer cap; read as before (pages of 500, no cap) the same list costs
several times as much. Bounded: 40 Secrets of 0.75 MiB (40 MiB in etcd)."""

from __future__ import annotations

import base64
import logging
import tracemalloc

import kubernetes
import pytest

from ocireg.api.ownership import MANAGED_SELECTOR
from ocireg.kube import cache as index
from ocireg.kube import client as kube
from ocireg.pullsecrets.plan import secret_state
from ocireg_devenv.controlplane import ControlPlane

MIB = 1024 * 1024
COUNT, SIZE = 40, 3 * MIB // 4


def _list_peak(source: kube.WatchSource) -> tuple[int, int]:
    store = index.Store("secrets", secret_state)
    watcher = index.Watcher(source, store, lambda namespace, name: None)
    tracemalloc.start()
    try:
        watcher._list()
        return len(store), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_index_lists_a_tenants_fat_labelled_secrets_within_a_bounded_peak(
    cluster: ControlPlane, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    api = kubernetes.config.new_client_from_config(str(cluster.admin_kubeconfig))
    core = kube.CoreV1(api)
    blob = base64.b64encode(b"\xfe" * SIZE).decode()
    for i in range(COUNT):
        core.create_namespaced_secret(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": f"fat-{i}",
                    "labels": {"app.kubernetes.io/managed-by": "ocireg"},
                },
                "type": "Opaque",
                "data": {"blob": blob},
            },
        )
    del blob
    # The index's Secret source, in one namespace (the index watches all of them).
    ours = kube.WatchSource(
        kube.Kube(api).core.list_namespaced_secret,
        kube.PAGES["secrets"],
        namespace=namespace,
        label_selector=MANAGED_SELECTOR,
    )
    with caplog.at_level(logging.WARNING, logger="ocireg.kube.client"):
        listed, peak = _list_peak(ours)
    # As before this change: one page of 500, read whole (no cap to speak of).
    before = kube.WatchSource(
        kube.CoreV1(api, max_answer_bytes=1 << 40).list_namespaced_secret,
        500,
        namespace=namespace,
        label_selector=MANAGED_SELECTOR,
    )
    listed_before, peak_before = _list_peak(before)
    print(f"index list of {COUNT} x {SIZE / MIB} MiB: {peak / MIB:.1f} MiB peak "
          f"(pages of {ours.limit}); as before: {peak_before / MIB:.1f} MiB")  # fmt: skip
    assert listed == listed_before == COUNT
    # 400 (and 25) such Secrets are more than the 8 MiB cap: halved down to 6 (6 MiB).
    assert ours.limit == 6
    assert "too large; asking for 6 at a time" in caplog.text
    assert peak < 24 * MIB, peak / MIB
    assert peak_before > 3 * peak, (peak_before / MIB, peak / MIB)
