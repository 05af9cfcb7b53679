"""What the operator's imports cost in memory, read from VmRSS of fresh interpreters.

    .venv/bin/python bench/import_cost.py [--repeat 3] [--tree operator] [--json PATH]

Each figure comes from /proc/self/status (VmRSS) of a new interpreter started for it, so
nothing this script imports counts, and each is the median of --repeat runs:

  alone   each library imported by itself into an empty interpreter: what it costs a process,
          its own dependencies included (so the rows overlap);
  layers  one interpreter importing the libraries in dependency order: what each adds once the
          ones above it are loaded (these rows add up); the Kubernetes client's core is loaded
          first without its two package __init__ files, which are then run as rows of their own;
  start   what `ocireg run` has imported when kopf starts working: the real
          ``ocireg.cli.main(["run"])``, with ``kopf.run`` replaced (once kopf is imported) by the
          login kopf.run does first, through the client as kopf does it: "in a pod" reads the
          service account (``load_incluster_config``, which outside a pod stops at once at the
          missing environment, having imported what it needs), "with a kubeconfig" goes on to
          ``load_kube_config`` as the benchmark and the test environment do (a missing file here);
          with --admission-webhook and no certificate files, the webhook's own certificate is
          made too, as its server does when it starts.

--tree runs the start path against another copy of the operator package, e.g. an older
commit's (``git archive <commit> operator | tar -x -C /tmp/before``, then
``--tree /tmp/before/operator``), to compare before and after in one run on one interpreter.
The figures are in docs/performance.md ("What the imports cost").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Read VmRSS (MB) in the child; every child starts with this.
RSS = """
import json, sys
def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
"""

ALONE = (
    "kopf",
    "kubernetes",
    "kubernetes.client",
    "kubernetes.config",
    "pydantic",
    "prometheus_client",
    "requests",
    "urllib3",
    "yaml",
    "aiohttp",
    "cryptography.x509",
    "google.auth.transport.requests",
    "requests_oauthlib",
    "semver",
)

CHILD_ALONE = (
    RSS
    + """
import importlib
before = rss()
importlib.import_module(sys.argv[1])
print(json.dumps({"python": before, "rss": rss(), "modules": len(sys.modules)}))
"""
)

# (label, modules): imported in this order into one interpreter. "!init kubernetes" runs
# that package's own __init__ (skipped until then, so the client's core is measured alone).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "standard library the rest use (asyncio, ssl, email, http.client, decimal, ...)",
        (
            "asyncio",
            "ssl",
            "email.parser",
            "http.client",
            "decimal",
            "multiprocessing.pool",
            "json",
            "logging",
            "concurrent.futures",
            "ipaddress",
            "uuid",
            "tempfile",
            "subprocess",
            "argparse",
        ),
    ),
    ("urllib3", ("urllib3",)),
    ("requests (charset_normalizer, idna, certifi)", ("requests",)),
    ("yaml", ("yaml",)),
    ("pydantic", ("pydantic",)),
    ("aiohttp (client and web)", ("aiohttp", "aiohttp.web")),
    ("prometheus_client", ("prometheus_client",)),
    (
        "kubernetes client core: api_client, configuration, rest, exceptions, watch, "
        "incluster_config (dateutil, durationpy, ...)",
        (
            "kubernetes.client",
            "kubernetes.client.api_client",
            "kubernetes.client.configuration",
            "kubernetes.client.rest",
            "kubernetes.client.exceptions",
            "kubernetes.watch.watch",
            "kubernetes.config.config_exception",
            "kubernetes.config.incluster_config",
        ),
    ),
    ("kopf (with the two client models it imports)", ("kopf",)),
    ("semver", ("semver",)),
    (
        "the operator's own modules (cli, handlers, pullsecrets, charts, oci, kube, api)",
        ("ocireg.cli", "ocireg.pullsecrets.handlers", "ocireg.charts.handlers"),
    ),
    (
        "kubernetes.config __init__: kube_config, google-auth with cryptography, oauthlib, ...",
        ("!init kubernetes.config",),
    ),
    (
        "kubernetes __init__: dynamic, stream (websocket-client), utils, leaderelection, informer",
        ("!init kubernetes",),
    ),
    ("the admission webhook's server (cryptography.x509)", ("ocireg.admission.server",)),
)

CHILD_LAYERS = (
    RSS
    + """
import importlib, importlib.util
layers = json.loads(sys.argv[1])
rows = [("python", rss())]
deferred = {}
for name in ("kubernetes", "kubernetes.config"):  # made, not run, until "!init"
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = deferred[name] = module
    if "." in name:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, module)
for label, modules in layers:
    for name in modules:
        if name.startswith("!init "):
            module = deferred[name.split()[1]]
            module.__spec__.loader.exec_module(module)
        else:
            importlib.import_module(name)
    rows.append((label, rss()))
print(json.dumps(rows))
"""
)

# Modules that say which parts came in: present or not after the start path.
WATCHED = (
    "kubernetes.config.kube_config",
    "google.auth",
    "cryptography",
    "oauthlib",
    "requests_oauthlib",
    "websocket",
    "kubernetes.dynamic",
    "kubernetes.stream",
    "kubernetes.informer",
    "ocireg.admission.server",
    "ocireg.api.crd",
)

CERT_FILES = ["--admission-cert-file", "/tls/tls.crt", "--admission-key-file", "/tls/tls.key"]

CHILD_START = (
    RSS
    + """
import importlib.abc, importlib.util, logging, os
mode, watched, cli_args = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
os.environ.pop("KUBERNETES_SERVICE_HOST", None)
os.environ["KUBECONFIG"] = os.path.join(os.sep, "nonexistent", "kubeconfig")
before = rss()

def login(**_):
    # What kopf.run does first: log in through the installed client.
    import kopf
    import kubernetes.config
    if mode == "pod":
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            pass  # outside a pod: stopped at the missing environment, after the imports
    else:
        try:
            settings = kopf.OperatorSettings()
            kopf.login_via_client(logger=logging.getLogger("bench"), settings=settings)
        except kopf.LoginError:
            pass  # a missing kubeconfig here, after the imports
    if "--admission-webhook" in cli_args and "--admission-cert-file" not in cli_args:
        # What the webhook's server does first when it starts: make its own certificate.
        from ocireg.admission.server import self_signed_certificate
        self_signed_certificate(["127.0.0.1"])

def connected(*_, **__):
    # ocireg run's check that the API server answers, before kopf: the same login.
    login()
    return {}

class StopKopfRun(importlib.abc.MetaPathFinder):
    # When kopf is imported, its run() becomes login() above; so does ocireg's connect().
    replaced = {"kopf": ("run", login), "ocireg.kube.client": ("connect", connected)}

    def find_spec(self, name, path=None, target=None):
        if name not in self.replaced:
            return None
        attribute, stand_in = self.replaced.pop(name)
        if not self.replaced:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        real = spec.loader.exec_module
        def exec_module(module):
            real(module)
            setattr(module, attribute, stand_in)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, StopKopfRun())
from ocireg import cli
code = cli.main(["run", *cli_args])
print(json.dumps({
    "python": before,
    "rss": rss(),
    "modules": len(sys.modules),
    "code": code,
    "loaded": [name for name in watched if name in sys.modules],
}))
"""
)


def child(code: str, *args: str, tree: Path | None = None) -> Any:
    env = dict(os.environ)
    paths = [str(tree)] if tree else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env.pop("PYTHONSTARTUP", None)
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def alone(repeat: int) -> list[dict[str, Any]]:
    rows = []
    for name in ALONE:
        runs = [child(CHILD_ALONE, name) for _ in range(repeat)]
        rows.append(
            {
                "library": name,
                "rss": median([r["rss"] for r in runs]),
                "added": median([r["rss"] - r["python"] for r in runs]),
                "modules": runs[0]["modules"],
            }
        )
    return rows


def layers(repeat: int, tree: Path) -> list[dict[str, Any]]:
    runs = [child(CHILD_LAYERS, json.dumps(LAYERS), tree=tree) for _ in range(repeat)]
    rows = []
    for index, (label, _) in enumerate(runs[0]):
        rss = median([run[index][1] for run in runs])
        added = median([run[index][1] - run[max(0, index - 1)][1] for run in runs])
        rows.append({"layer": label, "rss": rss, "added": added})
    return rows


def start(repeat: int, tree: Path, mode: str, args: list[str]) -> dict[str, Any]:
    runs = [child(CHILD_START, mode, json.dumps(WATCHED), *args, tree=tree) for _ in range(repeat)]
    return {
        "tree": str(tree),
        "mode": mode,
        "args": args,
        "rss": median([r["rss"] for r in runs]),
        "python": median([r["python"] for r in runs]),
        "modules": runs[0]["modules"],
        "loaded": runs[0]["loaded"],
        "code": runs[0]["code"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="operator package directory for the start path (repeatable; default: operator/)",
    )
    parser.add_argument("--skip-libraries", action="store_true", help="only the start path")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree or [ROOT / "operator"]]
    results: dict[str, Any] = {"python": sys.version.split()[0]}

    if not args.skip_libraries:
        results["alone"] = alone(args.repeat)
        print("| library, imported alone | RSS | added to python | modules |")
        print("| --- | --- | --- | --- |")
        for row in results["alone"]:
            name, rss, added = row["library"], row["rss"], row["added"]
            print(f"| `{name}` | {rss} MB | {added} MB | {row['modules']} |")
        results["layers"] = layers(args.repeat, trees[-1])
        print("\n| layer, in this order | RSS | added |")
        print("| --- | --- | --- |")
        for row in results["layers"]:
            print(f"| {row['layer']} | {row['rss']} MB | {row['added']} MB |")

    results["start"] = []
    print("\n| start path (`ocireg run` up to kopf's login) | tree | RSS | modules | loaded |")
    print("| --- | --- | --- | --- | --- |")
    for tree in trees:
        for mode, extra in (
            ("pod", []),
            ("kubeconfig", []),
            ("pod", ["--admission-webhook"]),
            ("pod", ["--admission-webhook", *CERT_FILES]),
        ):
            row = start(args.repeat, tree, mode, extra)
            results["start"].append(row)
            what = {"pod": "in a pod", "kubeconfig": "with a kubeconfig"}[mode]
            if extra:
                what += ", --admission-webhook, " + (
                    "certificate files given" if CERT_FILES[0] in extra else "self-signed"
                )
            loaded = ", ".join(row["loaded"]) or "none of them"
            print(f"| {what} | {tree} | {row['rss']} MB | {row['modules']} | {loaded} |")

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
