"""Reading SONIC's command line and data paths for the reference tracker.

The command line is composed with Hydra over the reference root's ``gear_sonic/config`` (laid out
like SONIC's), so ``+exp=...``, ``num_envs=...`` and ``++a.b=...`` mean what they mean to SONIC.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from grail_cluster.core.errors import ConfigError, DataError
from grail_cluster.sonic.reference import ROOT, reference_root  # noqa: F401 - re-exported for the trainer/evaluator
from grail_cluster.sonic.reference.motion import ReferenceMotion, load_motion
from grail_cluster.sonic.slicing import block_bounds, select_keys

CONFIG_DIR = ROOT / "gear_sonic" / "config"


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"bad override for the reference tracker: {exc}",
                          fix="use SONIC's override syntax: key=value for existing keys, ++key=value to force") from None
    if cfg.get("reference_unsupported"):
        raise ConfigError(f"{cfg.reference_unsupported}", fix="run this pipeline with SONIC (trainer=sonic)")
    return cfg


def argv_overrides() -> list[str]:
    return [a for a in sys.argv[1:] if not a.startswith("--")]


def mlc(cfg: DictConfig) -> DictConfig:
    return cfg.manager_env.commands.motion.motion_lib_cfg


def _dir(value, what: str, override: str) -> Path:
    if not value:
        raise ConfigError(f"{what} is not set", fix=f"pass ++{override}=<dir>")
    path = Path(str(value))
    if not path.exists():
        raise DataError(f"{what} not found", path=path, fix=f"check ++{override}")
    return path


def motion_keys(cfg: DictConfig) -> tuple[list[str], dict[str, Path]]:
    """Sorted keys of the recursive robot/ glob, after filter_motion_keys / remove_motion_keys."""
    robot_dir = _dir(mlc(cfg).motion_file, "motion_file (robot pickles)",
                     "manager_env.commands.motion.motion_lib_cfg.motion_file")
    files = {p.stem: p for p in sorted(robot_dir.rglob("*.pkl")) if p.stem != "metadata"}
    keys = select_keys(sorted(files), filter_keys=_list(mlc(cfg).filter_motion_keys),
                       remove_prefixes=_list(mlc(cfg).remove_motion_keys))
    return keys, files


def _list(value) -> list[str] | None:
    """A key list from the config: None, one string, or a list (OmegaConf ListConfig)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in OmegaConf.to_container(value)]


def shard_keys(keys: list[str], rank: int, world: int) -> list[str]:
    a, b = block_bounds(len(keys), world, rank)
    return keys[a:b]


def load_motions(cfg: DictConfig, keys: list[str], files: dict[str, Path]) -> list[ReferenceMotion]:
    lib = mlc(cfg)
    obj_dir = Path(str(lib.object_motion_file)) if lib.object_motion_file else None
    usd_dir = Path(str(cfg.manager_env.config.object_usd_path)) if cfg.manager_env.config.object_usd_path else None
    meta_dir = Path(str(lib.motion_file)).parent / "meta"  # meta/ is robot/'s sibling (contracts §1.1)
    out = []
    for key in keys:
        usd = None
        if usd_dir is not None:
            usd = next((usd_dir / f"{key}{s}" for s in (".usd", ".usda", ".usdc") if (usd_dir / f"{key}{s}").exists()), None)
            if usd is None:
                raise DataError(f"no USD for motion {key}", path=usd_dir,
                                fix="object_usd/<motion_key>.usd must exist for every motion (contracts §1.5)")
        out.append(load_motion(key, files[key], obj_dir / f"{key}.pkl" if obj_dir else None,
                               meta_dir / f"{key}.pkl", usd))
    return out


def cpu_threads() -> None:
    """One intra-op thread per process: ranks are processes, and oversubscribed BLAS threads thrash."""
    import torch

    torch.set_num_threads(int(os.environ.get("GRAIL_REFERENCE_THREADS", "1")))
