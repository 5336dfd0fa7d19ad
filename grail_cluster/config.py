"""Compose the Hydra configuration from ``configs/`` plus command-line overrides.

Overrides look exactly like SONIC's (``pipeline=pnp_table``, ``eval.num_shards=8``,
``++sonic.extra_overrides=[...]``, ``+foo=bar``). Everything a user can get wrong is reported as a
:class:`ConfigError` naming the key and what to pass, before anything is written.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .sharding import STRATEGIES

BACKENDS = ("local", "slurm", "kubernetes")
REQUIRED_EXAMPLES = {
    "data.motion_lib": "data.motion_lib=/data/motion_lib/pickup_table_ha",
    "sonic.root": "sonic.root=/workspace/grail/imports/SONIC",
    "cluster.image": "cluster.image=registry.example/grail-sonic:1.0",
}


def _reference_root() -> str:
    from .sonic.reference import reference_root

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
            fix = "that key is not in the config; to add a new key use `+key=value`, to force one `++key=value`"
        raise ConfigError(f"cannot apply the overrides: {_first_line(exc)}", fix=fix) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """Resolve interpolations; a missing mandatory value becomes a ConfigError naming the key."""
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
    lib = Path(c["data"]["motion_lib"]).expanduser()
    if not lib.is_dir():
        raise ConfigError("motion library not found", path=lib,
                          fix="set data.motion_lib to the library root holding robot/ objects/ meta/")
    for key in ("bps_dir", "object_usd_dir", "flat_motion_dir"):
        value = c["data"].get(key)
        if value and not Path(value).expanduser().is_dir():
            raise ConfigError(f"data.{key} is not a directory", path=value, fix=f"fix data.{key} or remove it")
    flat = c["data"].get("flat_usd_path")
    if flat and not Path(flat).expanduser().is_file():
        raise ConfigError("data.flat_usd_path does not exist", path=flat, fix="point it at flat_placeholder.usd")
    for ckpt in c["select"].get("checkpoints") or []:
        if not Path(ckpt).expanduser().is_file():
            raise ConfigError("checkpoint file listed in select.checkpoints does not exist", path=ckpt,
                              fix="list existing model_step_*.pt / last.pt files, or drop select.checkpoints")


def check_values(c: dict[str, Any]) -> None:
    backend = c["cluster"].get("backend")
    if backend not in BACKENDS:
        raise ConfigError(f"cluster.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    ev = c["eval"]
    if ev["sharding"] not in STRATEGIES:
        raise ConfigError(f"eval.sharding must be one of {', '.join(STRATEGIES)}, got {ev['sharding']!r}",
                          fix="eval.sharding=sonic_block (SONIC's own) or eval.sharding=balanced (by frames)")
    if not isinstance(ev["num_shards"], int) or ev["num_shards"] < 1:
        raise ConfigError(f"eval.num_shards must be an integer >= 1, got {ev['num_shards']!r}")
    tr = c["train"]
    for key in ("nodes", "gpus_per_node", "num_envs"):
        if not isinstance(tr[key], int) or tr[key] < 1:
            raise ConfigError(f"train.{key} must be an integer >= 1, got {tr[key]!r}")
    if not isinstance(c["select"]["k"], int) or c["select"]["k"] < 1:
        raise ConfigError(f"select.k must be an integer >= 1, got {c['select']['k']!r}")
    if backend == "local" and tr["nodes"] != 1 and tr["enabled"]:
        raise ConfigError("the local executor runs one node; train.nodes must be 1 with cluster=local",
                          fix="use cluster=slurm or cluster=kubernetes for multi-node training")
    for stage, res in c["resources"].items():
        for key in ("cpus", "mem", "time"):
            if not isinstance(res.get(key), int | float) or res[key] <= 0:
                raise ConfigError(f"resources.{stage}.{key} must be a positive number, got {res.get(key)!r}")


def load(overrides: list[str]) -> dict[str, Any]:
    """Compose, resolve and validate: the single entry for commands that take overrides."""
    c = to_dict(compose(overrides))
    check_values(c)
    check_paths(c)
    return c
