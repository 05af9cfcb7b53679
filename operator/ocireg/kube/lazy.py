"""The Kubernetes client without the two package __init__ files that import all of it.

``import kopf`` imports ``kubernetes.client`` (kopf recognises the client's objects when it is
installed), and importing any submodule first runs its packages' __init__ files:
``kubernetes/__init__.py`` imports config, dynamic, stream (websocket-client), utils,
leaderelection and informer, and ``kubernetes/config/__init__.py`` imports kube_config, which
imports google-auth (and through it cryptography), oauthlib and requests-oauthlib whether or not
a kubeconfig is ever read. In a pod the operator logs in with its service account
(``incluster_config``) and uses none of them: 13 MB of its memory at start
(docs/performance.md, "What the imports cost"; bench/import_cost.py measures it).

:func:`defer_client_inits`, called by ``ocireg run`` before anything imports the client, puts
both packages into ``sys.modules`` as module objects made from their own specs (their real
``__path__``, ``__file__`` and ``__spec__``, so every submodule imports as usual) whose __init__
has not run yet. The first time a name such a package does not have yet is read:

- ``kubernetes.config.ConfigException`` and ``kubernetes.config.load_incluster_config`` are taken
  from the submodules the __init__ takes them from (the in-cluster login reads them: ours in
  ``client.load_config`` and kopf's ``login_via_client``);
- a submodule's name imports that submodule (``kubernetes.client``, ``kubernetes.watch``);
- any other name (``load_kube_config``, ``__version__``, ...) runs the package's own __init__,
  once, into the module, and is then read from it.

So every name is the same object as without this; only when the code behind it runs changes
(``tests/unit/test_kube_lazy.py`` compares every public name with a plain import's, and logs in
through kopf with a service account without kube_config being imported). With a kubeconfig
(the test environment and the benchmark), ``load_kube_config`` runs config's __init__ and that
part of the saving is gone; ``kubernetes/__init__.py`` still never runs unless read.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

# The packages whose __init__ is deferred (parents first), each with the names read from one
# of its submodules without running it: exactly what its __init__ binds them to.
DEFERRED: dict[str, dict[str, str]] = {
    "kubernetes": {},
    "kubernetes.config": {
        "ConfigException": "config_exception",
        "load_incluster_config": "incluster_config",
    },
}
_LOCK = threading.RLock()  # held while an __init__ runs; reentrant: it reads its own package
_STARTED: set[str] = set()  # packages whose __init__ has started


class _Deferred(ModuleType):
    """A package whose __init__ has not run yet (see the module's docstring)."""

    def __getattr__(self, name: str) -> Any:
        # Called only for names the module does not have (yet).
        package = self.__name__
        if package not in _STARTED:
            found = _from_submodule(self, name)  # unlocked: imports have locks of their own
            if found is not _MISSING:
                return found
        # The thread running the __init__ passes (what it reads before binding it is missing,
        # as in any module being imported); the others wait for it to finish.
        with _LOCK:
            if package not in _STARTED:
                _STARTED.add(package)
                try:
                    _run_init(self)
                finally:
                    _plain(self)
        return ModuleType.__getattribute__(self, name)


_MISSING = object()


def _plain(package: ModuleType) -> None:
    package.__class__ = ModuleType  # an ordinary module from now on


def _run_init(package: ModuleType) -> None:
    spec = package.__spec__
    if spec is None or spec.loader is None:  # never: made from its spec by defer_client_inits
        raise ImportError(f"{package.__name__} has no loader", name=package.__name__)
    spec.loader.exec_module(package)


def _from_submodule(package: ModuleType, name: str) -> Any:
    """``name`` without the package's __init__, or _MISSING if only the __init__ has it."""
    source = DEFERRED[package.__name__].get(name)
    try:
        if source is not None:
            value = getattr(importlib.import_module(f"{package.__name__}.{source}"), name)
            setattr(package, name, value)
            return value
        full = f"{package.__name__}.{name}"
        if not name.startswith("__") and importlib.util.find_spec(full) is not None:
            return importlib.import_module(full)  # the import binds it on the package too
    except (ImportError, ValueError):
        pass  # laid out differently than expected: the __init__ decides
    return _MISSING


def defer_client_inits() -> bool:
    """Install the deferred packages: True if both are. False, doing nothing, if either is
    imported already or the client is not installed (then every import is an ordinary one);
    False too if a package is no longer one (from there on imports are ordinary)."""
    with _LOCK:
        if any(name in sys.modules for name in DEFERRED):
            return False
        if importlib.util.find_spec("kubernetes") is None:
            return False
        for name in DEFERRED:  # parents first: finding a child's spec needs its parent
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None or spec.submodule_search_locations is None:
                return False  # not a package any more: the rest are imported as usual
            module = importlib.util.module_from_spec(spec)
            module.__class__ = _Deferred
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)  # what importing it would do
        return True


__all__ = ["DEFERRED", "defer_client_inits"]
