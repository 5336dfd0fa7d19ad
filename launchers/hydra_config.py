"""Typed configs of the Hydra launcher plugin: ``hydra/launcher=grail_local`` and ``grail_slurm``.

Registered in Hydra's ConfigStore when Hydra scans ``hydra_plugins.grail_cluster_launcher`` (or when
this module is imported). Hydra checks key names and types itself (``hydra.launcher.tme=5`` is
refused with the list of valid keys); the launcher checks ranges and combinations when it starts
(``GrailLauncher.setup``). Kept free of heavy imports: every Hydra app imports it while scanning
plugins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

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


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/launcher", name="grail_local", node=GrailLocalConf, provider="grail_cluster")
    cs.store(group="hydra/launcher", name="grail_slurm", node=GrailSlurmConf, provider="grail_cluster")


register()
