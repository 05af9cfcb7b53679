"""The client's package __init__ files deferred (ocireg.kube.lazy): same names, less imported.

Imports are process state, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

from ocireg.kube.lazy import DEFERRED, defer_client_inits

# What the in-cluster login must not import (kubeconfig, OIDC and GCP auth-provider support,
# websocket streams, the dynamic client, ...).
NOT_IN_A_POD = (
    "kubernetes.config.kube_config",
    "google.auth",
    "cryptography",
    "oauthlib",
    "requests_oauthlib",
    "websocket",
    "kubernetes.dynamic",
    "kubernetes.stream",
    "kubernetes.informer",
    "kubernetes.leaderelection",
)

DESCRIBE = """
import json, sys, types
def describe(value):
    if isinstance(value, types.ModuleType):
        return ["module", value.__name__]
    if isinstance(value, (str, int, float, list, tuple)):
        return ["value", repr(value)]
    return ["object", getattr(value, "__module__", None), getattr(value, "__qualname__", None)]
def names(package):
    module = sys.modules[package]
    found = [n for n in vars(module) if not n.startswith("_")]
    dunders = ("__version__", "__project__", "__all__")
    return sorted(found + [n for n in dunders if hasattr(module, n)])
"""


def _child(code: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_name_is_the_one_a_plain_import_gives() -> None:
    plain = _child(
        DESCRIBE
        + """
import kubernetes, kubernetes.config
print(json.dumps({p: {n: describe(getattr(sys.modules[p], n)) for n in names(p)}
                  for p in ("kubernetes", "kubernetes.config")}))
"""
    )
    deferred = _child(
        DESCRIBE
        + """
from ocireg.kube.lazy import defer_client_inits
assert defer_client_inits()
import kopf  # imports kubernetes.client, as in the operator
import kubernetes
early = {
    "kubernetes.config": ("ConfigException", "load_incluster_config", "incluster_config"),
    "kubernetes": ("client", "config", "watch"),
}
early = {p: {n: getattr(sys.modules[p], n) for n in these} for p, these in early.items()}
before_init = "kubernetes.config.kube_config" in sys.modules or "kubernetes.dynamic" in sys.modules
wanted = json.loads(sys.argv[1])
got = {p: {n: describe(getattr(sys.modules[p], n)) for n in wanted[p]} for p in wanted}
same = all(getattr(sys.modules[p], n) is v for p, got in early.items() for n, v in got.items())
print(json.dumps({"got": got, "before_init": before_init, "same": same,
                  "names": {p: names(p) for p in wanted}}))
""",
        json.dumps({package: sorted(names) for package, names in plain.items()}),
    )
    assert not deferred["before_init"]  # those early names did not run either __init__
    assert deferred["same"]  # and are the objects the __init__ then bound
    assert deferred["got"] == plain
    assert deferred["names"] == {package: sorted(names) for package, names in plain.items()}


def test_a_pod_logs_in_through_kopf_and_ocireg_without_the_kubeconfig_code(
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "file-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    result = _child(
        """
import json, logging, os, sys
from ocireg.kube.lazy import defer_client_inits
assert defer_client_inits()
import kopf
from ocireg.pullsecrets import handlers  # noqa: the operator's start path
from ocireg.charts import handlers  # noqa
import kubernetes
import kubernetes.config.incluster_config as incluster
tmp, kubeconfig, watched = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
os.environ.update(KUBERNETES_SERVICE_HOST="10.0.0.1", KUBERNETES_SERVICE_PORT="443")
incluster.SERVICE_TOKEN_FILENAME = os.path.join(tmp, "token")
incluster.SERVICE_CERT_FILENAME = os.path.join(tmp, "ca.crt")
info = kopf.login_via_client(logger=logging.getLogger("t"), settings=kopf.OperatorSettings())
from ocireg.kube.client import Kube, load_config
load_config()
kube = Kube()
in_pod = [name for name in watched if name in sys.modules]
kubernetes.config.load_kube_config(config_file=kubeconfig)  # now its __init__ runs
host = kubernetes.client.Configuration.get_default_copy().host
print(json.dumps({"server": info.server, "token": info.token, "ca": info.ca_path,
                  "host": kube.api.configuration.host, "in_pod": in_pod, "kubeconfig_host": host,
                  "kube_config": "kubernetes.config.kube_config" in sys.modules}))
""",
        str(tmp_path),
        str(kubeconfig),
        json.dumps(NOT_IN_A_POD),
    )
    assert result["server"] == "https://10.0.0.1:443"
    assert result["token"] == "pod-token"
    assert result["ca"] == str(tmp_path / "ca.crt")
    assert result["host"] == "https://10.0.0.1:443"
    assert result["in_pod"] == []
    assert result["kubeconfig_host"] == "https://127.0.0.1:6443"
    assert result["kube_config"]


def test_threads_reading_the_deferred_names_at_once_all_get_them() -> None:
    result = _child(
        """
import json, sys, threading
from ocireg.kube.lazy import defer_client_inits
assert defer_client_inits()
import kubernetes
start, got = threading.Barrier(8), []
def read():
    start.wait()
    got.append((kubernetes.config.load_kube_config, kubernetes.__version__))
threads = [threading.Thread(target=read) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
from kubernetes.config.kube_config import load_kube_config
print(json.dumps({"all": len(got), "same": all(f is load_kube_config for f, _ in got),
                  "versions": sorted({v for _, v in got})}))
"""
    )
    assert result["all"] == 8
    assert result["same"]
    assert len(result["versions"]) == 1


def test_nothing_is_deferred_once_the_client_is_imported() -> None:
    import kubernetes  # noqa: F401  (the test process has it already; this says so)

    before = {name: sys.modules[name] for name in DEFERRED}
    assert not defer_client_inits()
    assert {name: sys.modules[name] for name in DEFERRED} == before
    assert all(type(module) is ModuleType for module in before.values())
