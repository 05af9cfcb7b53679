"""The operator's image, built from the repository's Dockerfile with buildah (chroot isolation,
no daemon) and run with podman as the chart's pod runs it, against the local control plane:
read-only root, the image's non-root user, no capabilities, the chart's ServiceAccount
identity mounted the way a kubelet mounts it. The base is a stand-in made from Debian packages
unless OCIREG_IMAGE_BASE names one (ocireg_devenv.image)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ocireg import __version__
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.image import (
    BASE_ENV,
    ROOT,
    ContainerEngine,
    OperatorContainer,
    stand_in_base,
    stand_in_key,
    write_identity,
)
from ocireg_devenv.processes import Tools, free_port
from ocireg_devenv.registries import LocalRegistries
from tests.conftest import OPERATOR_LOGS, _skip_or_fail, check_secret_hygiene

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    HELM_KUBE_VERSION,
    apply,
    condition,
    registry_object,
    secret,
    wait_for,
)
from .test_install import ChartInstall, _operator_args_and_env, chart_install  # noqa: F401 - the fixture

USER = "65532:65532"
# What the Dockerfile adds to its base: the virtualenv, 220 MB before it was pruned, 132 MB
# after (docs/performance.md, "The image").
ADDED_BYTES_LIMIT = 150_000_000
# The botocore models the image keeps (image/prune-venv.sh): every client ocireg creates and
# those of the default credential chain.
KEPT_BOTOCORE_CLIENTS = ("ecr", "ecr-public", "sts", "sso", "sso-oidc", "signin")


@dataclass
class BuiltImage:
    engine: ContainerEngine
    name: str
    base: str


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    missing = [tool for tool in ("buildah", "podman", "mmdebstrap") if not shutil.which(tool)]
    if missing:
        _skip_or_fail(
            f"image not built: {', '.join(missing)} missing (tests/cluster/build.sh "
            "installs them from Debian when run as root)"
        )
    if os.geteuid() != 0:
        _skip_or_fail("image not built: buildah's chroot isolation and podman need root here")
    engine = ContainerEngine(tmp_path_factory.mktemp("image"))
    try:
        base = os.environ.get(BASE_ENV) or engine.import_base(
            stand_in_base(), f"localhost/ocireg-base:{stand_in_key()}"
        )
        revision = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        name = engine.build(
            "localhost/ocireg",
            __version__,
            revision or "unknown",
            base,
            engine.workdir / "build.log",
        )
        yield BuiltImage(engine, name, base)
    finally:
        engine.reset()


def test_the_image_adds_only_the_pruned_virtualenv_and_runs_as_a_numeric_non_root_user(
    image: BuiltImage,
) -> None:
    engine = image.engine
    (config,) = engine.inspect(image.name, kind="image")
    assert config["Config"]["User"] == USER
    assert config["Config"]["Entrypoint"] == ["ocireg", "run"]
    labels = config["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.base.name"] == image.base

    added = engine.image_size(image.name) - engine.image_size(image.base)
    assert 0 < added < ADDED_BYTES_LIMIT, f"the Dockerfile adds {added / 1e6:.0f} MB to its base"
    # No installer, no build context, no asyncio copy of the kubernetes client.
    listing = engine.exec_in(
        image.name,
        "sh",
        "-c",
        "ls /opt/ocireg/bin; ls /opt/ocireg/lib/python3.11/site-packages/kubernetes; "
        "test ! -e /src || echo /src",
    ).split()
    assert "ocireg" in listing
    for absent in ("pip", "pip3", "aio"):
        assert absent not in listing, absent
    assert "/src" not in listing

    # What pruning kept loads: the operator's own modules and every botocore client it makes.
    loaded = engine.exec_in(
        image.name,
        "python3",
        "-c",
        "import json, boto3, kubernetes, ocireg.cli; s = boto3.Session(region_name='eu-west-1');"
        f" print(json.dumps([s.client(n).meta.service_model.service_name"
        f" for n in {list(KEPT_BOTOCORE_CLIENTS)!r}]))",
    )
    assert json.loads(loaded) == list(KEPT_BOTOCORE_CLIENTS)


def test_the_containerised_operator_makes_a_cluster_registry_ready(
    image: BuiltImage,
    cluster: ControlPlane,
    chart_install: ChartInstall,  # noqa: F811 - the fixture imported above
    registries: LocalRegistries,
    namespace: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    install = chart_install
    registry = registries.basic
    target = f"{namespace}-target"
    cluster.kubectl("create", "namespace", target)
    cluster.kubectl("label", "namespace", target, "pull=image")
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "image-login", "namespace": install.namespace},
            "stringData": {"username": registry.username, "password": registry.password},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "image-registry-ca", "namespace": install.namespace},
            "data": {"ca.crt": registries.ca_file.read_text()},
        },
    )
    # The chart's ServiceAccount identity, as a kubelet would mount it into the pod.
    token = cluster.service_account_token(install.namespace, install.service_account)
    identity = write_identity(
        tmp_path / "serviceaccount", token, cluster.ca.cert_pem, install.namespace
    )
    args, env = _operator_args_and_env(install)
    operator = OperatorContainer(
        engine=image.engine,
        image=image.name,
        name=f"ocireg-{secrets.token_hex(3)}",
        args=[*args, *ALLOW_LOCAL_REGISTRIES],
        env=env,
        identity_dir=identity,
        api_port=cluster.port,
        health_port=free_port(),
        log_path=tmp_path / "ocireg-container.log",
    )
    request.node.stash[OPERATOR_LOGS] = [operator]  # shown when the test fails
    operator.start()
    name = f"image-{secrets.token_hex(3)}"
    try:
        print(f"container healthy after {operator.wait_healthy():.1f}s")
        # The container is what the chart's securityContext asks for.
        (info,) = image.engine.inspect(operator.name)
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["Config"]["User"] == USER
        assert operator.exec("id", "-u").stdout.strip() == "65532"
        capabilities = operator.exec("grep", "^Cap", "/proc/1/status").stdout.splitlines()
        assert len(capabilities) == 5
        assert all(line.endswith("0000000000000000") for line in capabilities), capabilities
        refused = operator.exec("touch", "/opt/ocireg/x", check=False)
        assert refused.returncode != 0
        assert "Read-only file system" in refused.stderr

        apply(
            cluster,
            registry_object(
                "ClusterOCIRegistry",
                name,
                {
                    "server": registry.host,
                    "auth": {"basic": {"secretRef": {"name": "image-login"}}},
                    "tls": {"caBundleRef": {"configMap": "image-registry-ca"}},
                    "targets": {
                        "namespaceSelector": {"matchLabels": {"pull": "image"}},
                        "secretName": "pull",
                    },
                },
            ),
        )
        wait_for(
            lambda: condition(cluster, "ClusterOCIRegistry", name, "Ready").get("status") == "True",
            60,
            "ClusterOCIRegistry Ready=True, written by the containerised operator",
        )
        pull = secret(cluster, target, "pull")
        assert pull is not None
        assert pull["type"] == "kubernetes.io/dockerconfigjson"
        auths = json.loads(base64.b64decode(pull["data"][".dockerconfigjson"]))["auths"]
        assert base64.b64decode(auths[registry.host]["auth"]).decode() == (
            f"{registry.username}:{registry.password}"
        )
    finally:
        cluster.kubectl(
            "delete", "clusterociregistry", name, "--ignore-not-found", "--timeout=60s", check=False
        )
        code = operator.stop()
    # The finalizer was handled by the container: the copy is gone with the object.
    assert secret(cluster, target, "pull") is None
    assert code == 0, operator.logs()[-3000:]
    log = operator.logs()
    for refusal in ("Forbidden", "forbidden", "(403)", "Read-only file system", "Traceback"):
        assert refusal not in log, f"{refusal!r} in the container's log"
    leaks = check_secret_hygiene(cluster, [operator])  # type: ignore[list-item]
    assert not leaks, leaks
    cluster.kubectl("delete", "namespace", target, "--wait=false", check=False)


def test_the_release_publishes_an_image_and_a_chart_that_installs_it(
    image: BuiltImage, registries: LocalRegistries, tools: Tools, tmp_path: Path
) -> None:
    """image/release.sh, as .github/workflows/release.yml runs it, against the local
    htpasswd registry instead of ghcr.io."""
    registry = registries.basic
    owner = f"owner-{secrets.token_hex(3)}"
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    shutil.copy(registries.ca_file, ca_dir / "ca.crt")
    env = {
        "VERSION": __version__,
        "IMAGE": f"{registry.host}/{owner}/ocireg",
        "CHARTS": f"{registry.host}/{owner}/charts",
        "REGISTRY_USER": registry.username,
        "REGISTRY_PASSWORD": registry.password,
        "REGISTRY_CA_DIR": str(ca_dir),
        "PATH": f"{Path(tools.path('helm')).parent}:{os.environ['PATH']}",
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
    }
    engine = image.engine
    engine.run("buildah", "tag", image.name, f"{env['IMAGE']}:{__version__}")

    pushed = engine.release("push-image", env)
    assert pushed.returncode == 0, pushed.stderr
    reference = pushed.stdout.strip()
    assert reference.startswith(f"{env['IMAGE']}@sha256:"), reference
    # What a puller sees: the same digest, the release's labels.
    inspected = json.loads(
        subprocess.run(
            [
                "skopeo",
                "inspect",
                f"--cert-dir={ca_dir}",
                f"--creds={registry.username}:{registry.password}",
                f"docker://{env['IMAGE']}:{__version__}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert inspected["Digest"] == reference.split("@")[1]
    assert inspected["Labels"]["org.opencontainers.image.version"] == __version__

    charted = engine.release("push-chart", env)
    assert charted.returncode == 0, charted.stderr
    assert f"Pushed: {env['CHARTS']}/ocireg:{__version__}" in charted.stdout + charted.stderr
    # helm pulls the chart with the same login; it installs the image pushed with it.
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    helm = [tools.path("helm")]
    result = subprocess.run(
        [
            *helm,
            "pull",
            f"oci://{env['CHARTS']}/ocireg",
            f"--version={__version__}",
            f"--ca-file={ca_dir / 'ca.crt'}",
            f"--destination={pulled}",
        ],
        env={**engine.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = subprocess.run(
        [
            *helm,
            "template",
            "ocireg",
            str(pulled / f"ocireg-{__version__}.tgz"),
            *HELM_KUBE_VERSION,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    images = {
        container["image"]
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"{env['IMAGE']}:{__version__}"}

    # A tag that is not ocireg's own version publishes nothing.
    refused = engine.release("push-image", {**env, "VERSION": "9.9.9"})
    assert refused.returncode == 1
    assert f"VERSION 9.9.9 is not ocireg's version {__version__}" in refused.stderr
