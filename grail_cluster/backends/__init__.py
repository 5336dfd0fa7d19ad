"""Where planned work runs: one module (or package) per scheduler behind one protocol
(:class:`grail_cluster.backends.base.Backend`), found by ``cluster=<name>`` through :func:`get_backend`.

A backend is imported only when asked for: the Kubernetes client and submitit stay optional.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from grail_cluster.core.errors import GrailError

if TYPE_CHECKING:
    from grail_cluster.backends.base import Backend

# cluster=<name> -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "slurm": ("grail_cluster.backends.slurm", "SlurmBackend"),
    "kubernetes": ("grail_cluster.backends.kubernetes.client", "KubernetesBackend"),
    "local": ("grail_cluster.backends.local", "LocalBackend"),
}


def get_backend(name: str) -> Backend:
    """A fresh backend for ``cluster=<name>`` (each keeps its own scheduler-call counts)."""
    if name not in BACKENDS:
        raise GrailError(f"submitting to cluster={name} is not supported by this version",
                         fix="use cluster=slurm, cluster=kubernetes or cluster=local")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)()
