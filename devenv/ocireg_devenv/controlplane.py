"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

The apiserver runs with RBAC, client-certificate authentication and service-account token
signing (so TokenRequest works); the controller-manager runs the controllers that make
namespaces delete, owned objects get collected and every namespace get its ``default``
ServiceAccount.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import requests
import yaml

from ocireg_devenv.pki import CertificateAuthority, IssuedCert, rsa_key_pem
from ocireg_devenv.processes import LOOPBACK, Process, Tools, free_port, wait_until

# Controllers the tests and the operator depend on; everything else (nodes, pods, volumes)
# is irrelevant without kubelets and only costs memory.
CONTROLLERS = (
    "namespace-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
)

# The API server's audit log records who read which Secret or ConfigMap, in which namespace:
# tests that count an operator's reads count its own, in their namespace, and not those of the
# garbage collector or of operators still tidying other tests' namespaces (the request metrics
# have no user or namespace). Only single-object reads are logged, at Metadata level.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Metadata",
            "verbs": ["get"],
            "resources": [{"group": "", "resources": ["secrets", "configmaps"]}],
        },
        {"level": "None"},
    ],
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ControlPlane:
    """Start with :meth:`start`, stop with :meth:`stop`; usable as a context manager."""

    def __init__(self, workdir: Path | None = None, tools: Tools | None = None) -> None:
        self.tools = tools or Tools.locate()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ocireg-cp-"))
        self.pki_dir = self.workdir / "pki"
        self.ca = CertificateAuthority("ocireg local kubernetes CA")
        self.port = 0
        self.processes: list[Process] = []

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        """JSON lines, one per single-object Secret or ConfigMap read (AUDIT_POLICY)."""
        return self.workdir / "logs" / "audit.log"

    def start(self, timeout: float = 180) -> ControlPlane:
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        (self.pki_dir / "ca.crt").write_bytes(self.ca.cert_pem)
        sa_key = self.pki_dir / "sa.key"
        sa_key.write_bytes(rsa_key_pem())
        sa_key.chmod(0o600)
        serving = self.ca.server_cert(
            "kube-apiserver",
            [
                LOOPBACK,
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        serving_crt, serving_key = serving.write(self.pki_dir, "apiserver")
        audit_policy = self.pki_dir / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        self._admin = self.ca.client_cert("ocireg-admin", ("system:masters",))
        self._admin.write(self.pki_dir, "admin")

        etcd_port, peer_port = free_port(), free_port()
        self.port = free_port()
        kube_local = self.tools.path("kube-local")
        etcd = Process(
            "etcd",
            [
                kube_local,
                "etcd",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-url=http://{LOOPBACK}:{etcd_port}",
                f"--listen-peer-url=http://{LOOPBACK}:{peer_port}",
            ],
            self.workdir / "logs" / "etcd.log",
        ).start()
        self.processes.append(etcd)
        wait_until(lambda: _etcd_healthy(etcd_port), 60, "etcd to be healthy", etcd)

        apiserver = Process(
            "kube-apiserver",
            [
                kube_local,
                "kube-apiserver",
                f"--etcd-servers=http://{LOOPBACK}:{etcd_port}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={self.port}",
                f"--tls-cert-file={serving_crt}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={self.pki_dir / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.96.0.0/16",
                # No kubelets or nodes exist; the `kubernetes` Service endpoints would point at
                # loopback, which the API rejects, so do not reconcile them.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                "--profiling=false",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                # Written at once (not batched), so a test reads every request answered so far.
                "--audit-log-mode=blocking",
                "--audit-log-maxsize=200",
                "--v=1",
            ],
            self.workdir / "logs" / "kube-apiserver.log",
        ).start()
        self.processes.append(apiserver)
        self.write_kubeconfig(self.admin_kubeconfig, "admin", cert=self._admin)
        wait_until(self._ready, timeout, "kube-apiserver /readyz", apiserver)

        controller_manager = Process(
            "kube-controller-manager",
            [
                kube_local,
                "kube-controller-manager",
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={self.pki_dir / 'ca.crt'}",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=1",
            ],
            self.workdir / "logs" / "kube-controller-manager.log",
        ).start()
        self.processes.append(controller_manager)
        wait_until(
            lambda: self._has_default_service_account("default"),
            timeout,
            "the default ServiceAccount (controller-manager working)",
            controller_manager,
        )
        return self

    def restart_apiserver(self, down_for: float = 0, timeout: float = 120) -> None:
        """Stop kube-apiserver (SIGTERM), wait ``down_for`` seconds, start it again on the same
        port with the same certificates and etcd, and wait until it is ready: a fault clients
        must ride out."""
        apiserver = next(p for p in self.processes if p.name == "kube-apiserver")
        apiserver.stop()
        time.sleep(down_for)
        apiserver.start()
        wait_until(self._ready, timeout, "kube-apiserver /readyz after a restart", apiserver)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(lines)}" for p in self.processes)

    # -- identities ------------------------------------------------------------------------

    def write_kubeconfig(
        self,
        path: Path,
        user: str,
        *,
        cert: IssuedCert | None = None,
        token: str | None = None,
        namespace: str = "default",
    ) -> Path:
        user_entry: dict[str, str] = {}
        if cert is not None:
            user_entry["client-certificate-data"] = _b64(cert.cert_pem)
            user_entry["client-key-data"] = _b64(cert.key_pem)
        if token is not None:
            user_entry["token"] = token
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self.ca.cert_pem),
                    },
                }
            ],
            "users": [{"name": user, "user": user_entry}],
            "contexts": [
                {
                    "name": user,
                    "context": {"cluster": "local", "user": user, "namespace": namespace},
                }
            ],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def kubeconfig_for_user(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig authenticating as ``user`` in ``groups`` by client certificate."""
        safe = "".join(c if c.isalnum() else "-" for c in user)
        cert = self.ca.client_cert(user, tuple(groups))
        return self.write_kubeconfig(self.workdir / "users" / f"{safe}.kubeconfig", user, cert=cert)

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, duration: str = "1h"
    ) -> Path:
        """A kubeconfig holding a TokenRequest token for the ServiceAccount."""
        token = self.service_account_token(namespace, name, duration)
        return self.write_kubeconfig(
            self.workdir / "users" / f"sa-{namespace}-{name}.kubeconfig",
            f"system:serviceaccount:{namespace}:{name}",
            token=token,
            namespace=namespace,
        )

    def service_account_token(self, namespace: str, name: str, duration: str = "1h") -> str:
        """A TokenRequest token for the ServiceAccount (what a kubelet mounts into its pods)."""
        return self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()

    # -- clients ---------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            self.tools.path("kubectl"),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            *args,
        ]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlFailed(result.returncode, argv, result.stdout, result.stderr)
        return result

    def audited_reads(self, namespace: str, resources: Sequence[str]) -> list[dict]:
        """The audit events of single-object reads of these resources in this namespace, in
        the order the API server answered them (see AUDIT_POLICY)."""
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if ref.get("namespace") == namespace and ref.get("resource") in resources:
                events.append(event)
        return events

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def _session(self) -> requests.Session:
        session = requests.Session()
        # Ignore REQUESTS_CA_BUNDLE and proxies from the environment: they would override
        # the session's CA and route loopback traffic elsewhere.
        session.trust_env = False
        session.verify = str(self.pki_dir / "ca.crt")
        session.cert = (str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return session

    def _ready(self) -> bool:
        with self._session() as s:
            return s.get(f"{self.server}/readyz", timeout=5).status_code == 200

    def _has_default_service_account(self, namespace: str) -> bool:
        with self._session() as s:
            url = f"{self.server}/api/v1/namespaces/{namespace}/serviceaccounts/default"
            return s.get(url, timeout=5).status_code == 200


class KubectlFailed(subprocess.CalledProcessError):
    """A kubectl call that failed; its message ends with what kubectl said."""

    def __str__(self) -> str:
        said = (self.stderr or "").strip()[-2000:]
        return f"{super().__str__()}\nkubectl said: {said}"


def _etcd_healthy(port: int) -> bool:
    return requests.get(f"http://{LOOPBACK}:{port}/health", timeout=2).json()["health"] == "true"
