"""The operator's API client keeps a connection for every namespace job that may call at
once: with the client's default (5 per CPU, 10 on the 2-core pods the chart asks for) a burst
of 16 jobs threw 6 connections away after each call ("Connection pool is full") and made a
new TLS handshake for each next one."""

from __future__ import annotations

import kubernetes

from ocireg.kube.client import Kube


def _kept(kube: Kube) -> int:
    return int(kube.api.rest_client.pool_manager.connection_pool_kw["maxsize"])


def test_the_client_keeps_as_many_connections_as_it_is_given() -> None:
    assert _kept(Kube(connections=20)) == 20


def test_without_a_number_the_clients_default_stays() -> None:
    default = kubernetes.client.Configuration.get_default_copy().connection_pool_maxsize
    assert _kept(Kube()) == default
