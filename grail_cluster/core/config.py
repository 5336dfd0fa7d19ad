"""Compose the Hydra configuration from ``configs/`` plus command-line overrides.

Overrides look exactly like SONIC's (``pipeline=pnp_table``, ``eval.num_shards=8``,
``++sonic.extra_overrides=[...]``, ``+foo=bar``). Everything a user can get wrong is reported as a
:class:`ConfigError` naming the key and what to pass, before anything is written.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grail_cluster.core.errors import ConfigError
from grail_cluster.core.settings import KubernetesCluster, check_settings, register_configs, settings
from grail_cluster.core.sharding import STRATEGIES

BACKENDS = ("local", "slurm", "kubernetes")
REQUIRED_EXAMPLES = {
    "data.motion_lib": "data.motion_lib=/data/motion_lib/pickup_table_ha",
    "sonic.root": "sonic.root=/workspace/grail/imports/SONIC",
    "cluster.image": "cluster.image=registry.example/grail-sonic:1.0",
}


def _reference_root() -> str:
    from grail_cluster.sonic.reference import reference_root

    return reference_root()


# ``${grail_reference_root:}``: where the embedded reference tracker's SONIC-layout root is installed.
if not OmegaConf.has_resolver("grail_reference_root"):
    OmegaConf.register_new_resolver("grail_reference_root", _reference_root)


def config_dir() -> Path:
    return Path(str(resources.files("grail_cluster.configs")))


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from grail_cluster.core.overrides import check_syntax, check_unread

    check_syntax(list(overrides))
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base=None, config_dir=str(config_dir()), job_name="grail_cluster"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        text = str(exc)
        fix = "check the spelling; `grail-cluster plan --help` lists the groups and keys"
        if "Available options in" in text:
            listing = text.split("Available options in", 1)[1].split("Config search path", 1)[0]
            options = [ln.strip() for ln in listing.splitlines()[1:] if ln.strip()]
            fix = f"choose one of: {', '.join(options)}"
        elif "Ambiguous value for argument" in text:
            fix = ("to sweep it, add -m (`grail-cluster run -m ...`: one training point per value); for a list "
                   "write key=[a,b]; for a string with a comma quote it: key='a,b'")
        elif "Could not override" in text:
            fix = ("that key is not in grail-cluster's config: check the spelling (`grail-cluster plan --help`); "
                   "SONIC training keys go under ++train.overrides.<key>=...")
        bad = _unparsable(overrides)
        if bad:
            # Hydra's parser names the input fragment, not which override it came from.
            raise ConfigError(f"cannot parse the override {bad!r}: {_first_line(exc)}",
                              fix="write key=value; lists as key=[a,b] (balanced brackets); quote values holding "
                                  "spaces, brackets or commas: key='a,b'") from None
        raise ConfigError(f"cannot apply the overrides: {_first_line(exc)}", fix=fix) from None
    finally:
        GlobalHydra.instance().clear()
    check_unread(list(overrides), compose)  # added keys nothing reads, deleted keys the code needs
    return cfg


def _unparsable(overrides: list[str]) -> str | None:
    """The first override Hydra's grammar rejects on its own, if any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for item in overrides:
        try:
            parser.parse_override(item)
        except (HydraException, OmegaConfBaseException, ValueError):
            return item
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def job_python_default(backend: str | None) -> str:
    """``job.python: null``: the interpreter running grail-cluster now, as submitit does, so a job never
    depends on what ``python`` means on the compute node's PATH. Kubernetes pods run the image's own
    interpreter (this machine's path does not exist there). Not resolved through symlinks: a venv's
    ``bin/python`` is a symlink whose target does not see the venv's packages."""
    if backend == "kubernetes":
        return "python"
    return os.path.abspath(sys.executable) if sys.executable else "python"


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """Resolve interpolations; a missing mandatory value becomes a ConfigError naming the key."""
    if cfg.get("job") is not None and cfg.job.get("python") is None:
        # Before resolving: trainer=reference interpolates ${job.python} into sonic.python and the launcher.
        cfg.job.python = job_python_default(cfg.cluster.get("backend"))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if cfg.cluster.get("backend") != "kubernetes":
        missing = [k for k in missing if not k.startswith("cluster.")]
    if missing:
        key = missing[0]
        example = REQUIRED_EXAMPLES.get(key, f"{key}=...")
        raise ConfigError(
            f"required setting `{key}` is not set" + (f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""),
            fix=f"add `{example}` to the command line",
        )
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve the configuration: {_first_line(exc)}") from None


def check_paths(c: dict[str, Any]) -> None:
    """Required paths must exist before anything is planned or written."""
    s = settings(c)
    lib = Path(s.data.motion_lib).expanduser()
    if not lib.is_dir():
        raise ConfigError("data.motion_lib: motion library not found", path=lib,
                          fix="set data.motion_lib to the library root holding robot/ objects/ meta/")
    for key in ("bps_dir", "object_usd_dir", "flat_motion_dir"):
        value = getattr(s.data, key)
        if value and not Path(value).expanduser().is_dir():
            raise ConfigError(f"data.{key} is not a directory", path=value, fix=f"fix data.{key} or remove it")
    flat = s.data.flat_usd_path
    if flat and not Path(flat).expanduser().is_file():
        raise ConfigError("data.flat_usd_path does not exist", path=flat, fix="point it at flat_placeholder.usd")
    for ckpt in s.select.checkpoints or []:
        if not Path(ckpt).expanduser().is_file():
            raise ConfigError("checkpoint file listed in select.checkpoints does not exist", path=ckpt,
                              fix="list existing model_step_*.pt / last.pt files, or drop select.checkpoints")
    check_run_root(s.run.root)
    if not isinstance(s.cluster, KubernetesCluster):
        # On SLURM and the local executor jobs see this machine's paths (a shared file system); in a pod
        # the image's interpreters apply, which `doctor --cluster` cannot reach either.
        check_interpreter("job.python", s.job.python, "/path/to/python-with-grail-cluster")
        if not s.rehearsal.enabled:
            check_interpreter("sonic.python", s.sonic.python, "/path/to/sonic-env/bin/python")


def check_interpreter(key: str, value: Any, example: str) -> None:
    """A path-like interpreter must be an executable file. A bare name (``python``) is looked up on the
    job's PATH after its setup lines, which only the job itself (or `doctor --cluster`) can see."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be an interpreter path or command name, got {value!r}",
                          fix=f"{key}={example}")
    if os.sep not in value and not value.startswith("~"):
        return
    path = Path(value).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        what = "is not an executable file" if path.exists() else "does not exist"
        raise ConfigError(f"{key}: the interpreter {what}", path=value,
                          fix=f"{key}={example} (or leave job.python unset: the interpreter running grail-cluster)")


def check_run_root(root: Any) -> None:
    """run.root must be a directory we can create run dirs in (refused now, not as a traceback at write)."""
    path = Path(str(root)).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError("run.root is not a directory" + ("" if probe == path else f" ({probe} is a file)"),
                          path=root, fix="run.root=<a directory for run dirs>")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"run.root is not writable ({probe} cannot be written by this user)", path=root,
                          fix="run.root=<a writable directory on the shared file system>")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _need_int(key: str, value: Any, *, minimum: int, optional: bool = False, example: str | None = None) -> None:
    if optional and value is None:
        return
    if not _is_int(value) or value < minimum:
        null = " or null" if optional else ""
        raise ConfigError(f"{key} must be an integer >= {minimum}{null}, got {value!r}",
                          fix=f"{key}={example if example is not None else max(minimum, 1)}")


def check_values(c: dict[str, Any]) -> None:
    backend = c["cluster"].get("backend")
    if backend not in BACKENDS:
        raise ConfigError(f"cluster.backend must be one of {', '.join(BACKENDS)}, got {backend!r}",
                          fix="cluster=slurm, cluster=local or cluster=kubernetes")
    ev = c["eval"]
    if ev["sharding"] not in STRATEGIES:
        raise ConfigError(f"eval.sharding must be one of {', '.join(STRATEGIES)}, got {ev['sharding']!r}",
                          fix="eval.sharding=sonic_block (SONIC's own) or eval.sharding=balanced (by frames)")
    _need_int("eval.num_shards", ev["num_shards"], minimum=1, example=8)
    # 0 used to mean "the shard size" silently (``0 or size``); null is the documented way to say so.
    _need_int("eval.num_envs", ev.get("num_envs"), minimum=1, optional=True, example="null")
    tr = c["train"]
    for key in ("nodes", "gpus_per_node", "num_envs"):
        _need_int(f"train.{key}", tr[key], minimum=1)
    _need_int("train.iterations", tr.get("iterations"), minimum=1, optional=True, example=20000)
    _need_int("train.save_frequency", tr.get("save_frequency"), minimum=1, optional=True, example=500)
    mode = (tr.get("finetune") or {}).get("mode", "resume")
    if mode not in ("resume", "weights_only"):
        raise ConfigError(f"train.finetune.mode must be resume or weights_only, got {mode!r}",
                          fix="train.finetune.mode=resume (weights + optimizer, the documented recipe) or "
                              "train.finetune.mode=weights_only")
    if tr.get("device", "gpu") not in ("gpu", "cpu"):
        raise ConfigError(f"train.device must be gpu or cpu, got {tr.get('device')!r}", fix="train.device=gpu")
    _need_int("select.k", c["select"]["k"], minimum=1, example=5)
    min_sr = c["select"].get("min_sr")
    if not _is_number(min_sr) or not 0.0 <= min_sr <= 1.0:
        raise ConfigError(f"select.min_sr is a success rate in [0, 1], got {min_sr!r}", fix="select.min_sr=0.5")
    min_progress = c["export"].get("min_progress")
    if not _is_number(min_progress) or not 0.0 <= min_progress <= 1.0:
        raise ConfigError(f"export.min_progress is a fraction in [0, 1], got {min_progress!r}",
                          fix="export.min_progress=1.0")
    if backend == "local" and tr["nodes"] != 1 and tr["enabled"]:
        raise ConfigError("the local executor runs one node; train.nodes must be 1 with cluster=local",
                          fix="use cluster=slurm or cluster=kubernetes for multi-node training")
    if backend == "slurm":
        _need_int("cluster.array_parallelism", c["cluster"].get("array_parallelism"), minimum=1, example=256)
        _need_int("cluster.max_array_size", c["cluster"].get("max_array_size"), minimum=1, optional=True,
                  example="null")
    for stage, res in c["resources"].items():
        if not isinstance(res, dict):
            raise ConfigError(f"resources.{stage} must be a mapping of cpus, mem, time (and gpus), got {res!r}",
                              fix=f"resources.{stage}.cpus=4 resources.{stage}.mem=16 resources.{stage}.time=60")
        for key in ("cpus", "mem"):
            if not _is_number(res.get(key)) or res[key] <= 0:
                raise ConfigError(f"resources.{stage}.{key} must be a positive number, got {res.get(key)!r}",
                                  fix=f"resources.{stage}.{key}=4")
        # Whole minutes: a fraction used to round down to 0, which SLURM reads as "no time limit".
        _need_int(f"resources.{stage}.time", res.get("time"), minimum=1, example=60)
        _need_int(f"resources.{stage}.cpus", res.get("cpus"), minimum=1, example=4)
        if "gpus" in res:
            _need_int(f"resources.{stage}.gpus", res["gpus"], minimum=0, example=1)


def load(overrides: list[str]) -> dict[str, Any]:
    """Compose, resolve and validate: the single entry for commands that take overrides. The config
    stays the plain composed dict (plan.json holds and hashes it); :func:`settings` is its typed view."""
    c = to_dict(compose(overrides))
    check_values(c)  # first: its messages name the rule (a range, the choices), not only the type
    check_settings(c)
    check_paths(c)
    return c
