"""Typed configs of the Hydra launcher plugin: ``hydra/launcher=grail_local`` and ``grail_slurm``.

Registered in Hydra's ConfigStore when Hydra scans ``hydra_plugins.grail_cluster_launcher`` (or when
this module is imported). Hydra checks key names and types itself (``hydra.launcher.tme=5`` is
refused with the list of valid keys); :func:`check_options` checks ranges and combinations when the
launcher starts (``GrailLauncher.setup``), before anything is submitted. Kept free of heavy imports:
every Hydra app imports it while scanning plugins.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from grail_cluster.launchers.errors import LauncherConfigError

# Hydra only instantiates plugin classes that live under ``hydra_plugins.``; these are thin
# subclasses of the classes in grail_cluster.launchers.hydra_launcher.
_PLUGIN_MODULE = "hydra_plugins.grail_cluster_launcher.grail_launcher"


@dataclass
class GrailLauncherConf:
    """Options shared by both backends."""

    # true: block until every job has ended and return their results; false: return once every job
    # is submitted (JobReturn.status UNKNOWN) and print where the results will appear.
    wait: bool = True
    # true: a re-run of the same sweep (same hydra.sweep.dir) returns the jobs recorded as done
    # without running them, waits on the ones still queued/running and submits only the rest. A
    # recorded result is reused only when the app config (without hydra), the job's overrides and
    # the code (code_key) are all unchanged. Force a re-run: resume=false, or remove
    # <hydra.sweep.dir>/.grail.
    resume: bool = True
    # What "the code" is in that key. tree: the task function's source file and every module of
    # the same project its imports reach (sha256 of each), plus the git commit and uncommitted
    # changes to tracked files of the checkout holding the task; source: those source digests
    # only (a new commit or an edit elsewhere in the checkout keeps results); off: config and
    # overrides only (a result of older code is reused: only for tasks you know did not change).
    code_key: str = "tree"
    # Ledger, payloads, results and scheduler logs of this sweep.
    state_dir: str = "${hydra.sweep.dir}/.grail"
    # The interpreter that runs each job (null: the one running the launcher).
    python: str | None = None


@dataclass
class GrailLocalConf(GrailLauncherConf):
    _target_: str = f"{_PLUGIN_MODULE}.GrailLocalLauncher"
    # Jobs running at once on this machine (null: the number of CPUs this process may use).
    max_parallel: int | None = None


@dataclass
class GrailSlurmConf(GrailLauncherConf):
    _target_: str = f"{_PLUGIN_MODULE}.GrailSlurmLauncher"
    name: str = "${hydra.job.name}"
    partition: str | None = None
    # Wall-clock limit of each job, in minutes.
    time: int = 60
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    # GPUs per job, requested as GRES (--gres=gpu:N).
    gpus_per_node: int | None = None
    # Only 1: a Hydra job is one process here (multi-node training goes through grail-cluster run).
    nodes: int = 1
    # Tasks of the array running at once (the %P of --array=0-N%P).
    array_parallelism: int = 256
    # Shell lines run in the job before the Python job entry (module loads, conda activate, exports).
    setup: list[str] = field(default_factory=list)
    # Any other sbatch option, e.g. {account: lab, qos: high, exclusive: true}.
    additional_parameters: dict[str, Any] = field(default_factory=dict)


# hydra.launcher.code_key: what code a reused result must have come from (launchers.keys.code_change).
CODE_KEYS = ("tree", "source", "off")
# sbatch options the launcher sets itself (-> the option that sets them); additional_parameters may not.
_OWN_SBATCH = {"array": "array_parallelism", "job-name": "name", "time": "time", "partition": "partition",
               "cpus-per-task": "cpus_per_task", "mem": "mem_gb", "nodes": "nodes", "ntasks": None,
               "output": None, "error": None, "chdir": None}


def check_options(p: dict[str, Any], backend: str) -> None:
    """Refuse bad option values of ``hydra/launcher=grail_<backend>`` (resolved to plain values),
    naming the option and the fix."""
    if not str(p.get("state_dir") or "").strip():
        raise LauncherConfigError("hydra.launcher.state_dir is empty",
                                  fix="leave the default (${hydra.sweep.dir}/.grail) or give a directory")
    if p.get("code_key", "tree") not in CODE_KEYS:
        raise LauncherConfigError(f"hydra.launcher.code_key={p.get('code_key')}: must be one of "
                                  f"{', '.join(CODE_KEYS)}",
                                  fix="leave the default (tree), or give source or off")
    python = p.get("python")
    if python is not None and not shutil.which(python):  # a path or a name on PATH
        raise LauncherConfigError(f"hydra.launcher.python={python}: no such executable",
                                  fix="give a Python interpreter that has grail-cluster installed, "
                                      "or null for this one")
    try:
        import cloudpickle  # noqa: F401
    except ImportError:
        raise LauncherConfigError(f"hydra/launcher=grail_{backend} needs cloudpickle to hand the "
                                  "task function to its jobs",
                                  fix="pip install cloudpickle (grail-cluster[slurm] has it)") from None
    if backend == "local":
        _check_local(p)
    else:
        _check_slurm(p)


def _check_local(p: dict[str, Any]) -> None:
    mp = p.get("max_parallel")
    if mp is not None and int(mp) < 1:
        raise LauncherConfigError(f"hydra.launcher.max_parallel={mp}: must be at least 1",
                                  fix="give the number of jobs to run at once, or null for one per CPU")


def _check_slurm(p: dict[str, Any]) -> None:
    for key, low in (("time", 1), ("array_parallelism", 1), ("cpus_per_task", 1), ("gpus_per_node", 0)):
        if p.get(key) is not None and int(p[key]) < low:
            nullable = " (or null to leave it to SLURM)" if key in ("cpus_per_task", "gpus_per_node") else ""
            raise LauncherConfigError(f"hydra.launcher.{key}={p[key]}: must be at least {low}",
                                      fix=f"set hydra.launcher.{key} to a value >= {low}{nullable}")
    if p.get("mem_gb") is not None and float(p["mem_gb"]) <= 0:
        raise LauncherConfigError(f"hydra.launcher.mem_gb={p['mem_gb']}: must be positive",
                                  fix="give the memory per job in GB, or null for the partition's default")
    if int(p.get("nodes", 1)) != 1:
        raise LauncherConfigError(f"hydra.launcher.nodes={p['nodes']}: grail_slurm runs each Hydra job "
                                  "as one process on one node",
                                  fix="drop the override (multi-node training: grail-cluster run, or "
                                      "hydra/launcher=submitit_slurm)")
    if not str(p.get("name") or "").strip():
        raise LauncherConfigError("hydra.launcher.name is empty",
                                  fix="leave the default (${hydra.job.name}) or give a name")
    setup = p.get("setup") or []
    if not isinstance(setup, list) or not all(isinstance(s, str) for s in setup):
        raise LauncherConfigError(f"hydra.launcher.setup={setup!r}: must be a list of shell lines",
                                  fix="e.g. 'hydra.launcher.setup=[\"module load cuda\"]'")
    for key, value in (p.get("additional_parameters") or {}).items():
        check_sbatch_option(str(key), value, gpus_set=p.get("gpus_per_node") is not None)
    if not shutil.which("sbatch"):
        raise LauncherConfigError("hydra/launcher=grail_slurm: `sbatch` not found: this machine has no "
                                  "SLURM client",
                                  fix="run on a SLURM login node, or use hydra/launcher=grail_local")


def check_sbatch_option(key: str, value: Any, *, gpus_set: bool) -> None:
    name = key.replace("_", "-")
    where = f"hydra.launcher.additional_parameters.{key}"
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", name):
        raise LauncherConfigError(f"{where}: {key!r} is not an sbatch option name",
                                  fix="use the long option without dashes, e.g. "
                                      "additional_parameters.account=lab")
    if name in _OWN_SBATCH or (name == "gres" and gpus_set):
        own = _OWN_SBATCH.get(name, "gpus_per_node")
        raise LauncherConfigError(f"{where}: the launcher sets --{name} itself",
                                  fix=f"use hydra.launcher.{own}" if own
                                  else "drop it: the launcher manages it per sweep")
    if "\n" in str(value):
        raise LauncherConfigError(f"{where}: the value contains a newline", fix="give a one-line value")


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/launcher", name="grail_local", node=GrailLocalConf, provider="grail_cluster")
    cs.store(group="hydra/launcher", name="grail_slurm", node=GrailSlurmConf, provider="grail_cluster")


register()
