"""Overrides that Hydra accepts but grail-cluster would silently ignore or trip over later.

Hydra lets ``+key=value`` / ``++key=value`` add any key, and ``~key`` delete any key. grail-cluster
reads a fixed set of keys, so an added key outside the free-form maps is never read: ``+exp=hoi/pnp_table``
(SONIC's release-config flag, which grail-cluster picks with ``pipeline=``), ``++algo.config.learning_rate=1e-4``
(a SONIC key at the top level instead of under ``train.overrides``) or a typo like
``+eval.nmu_shards=3`` would plan and run with exit 0 while the user believes the setting took effect.
A deleted key that the code reads fails later with a traceback. Both are refused here, naming the
override and what to write instead.

Free-form maps (their keys are data: environment variables, SONIC keys, node labels) are those that are
empty in the composed defaults, plus the few below whose defaults are not empty.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from grail_cluster.core.errors import ConfigError

OPEN_MAPS = ("train.overrides", "sonic.env", "job.env", "hydra")
# SONIC's own top-level config groups and keys: written at grail-cluster's top level they were meant
# for the trainer.
SONIC_TOP = ("algo", "manager_env", "callbacks", "num_envs", "headless", "experiment_dir", "checkpoint", "resume",
             "seed", "wandb", "use_wandb", "project_name", "experiment_name", "exp_var", "base_dir", "robot", "env")


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def _lookup(cfg: Any, key: str) -> tuple[bool, Any]:
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False, None
        node = node[part]
    return True, node


def _in_open_map(base: Any, key: str) -> bool:
    parts = key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if prefix in OPEN_MAPS:
            return True
        found, value = _lookup(base, prefix)
        if found and hasattr(value, "keys") and len(value) == 0:
            return True
    return parts[0] == "hydra"


def _fix_for(key: str, text: str, base: Any) -> str:
    head = key.split(".")[0]
    if head == "exp":
        return ("grail-cluster picks SONIC's +exp= release config with pipeline=: pipeline=pnp_table, pnp_ground, "
                "advanced_manip_table, advanced_manip_ground or terrain_tracking")
    if head in SONIC_TOP:
        return (f"a SONIC training key goes to the trainer as ++train.overrides.{key}=... (sweepable), or verbatim "
                f"in '++sonic.extra_overrides=[\"{text.lstrip('+~')}\"]'; eval keys in sonic.eval_overrides")
    known = _flat_keys(base)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f"did you mean `{close[0]}`? " if close else ""
    return (f"{hint}grail-cluster never reads `{key}`; check the spelling (`grail-cluster plan --help`, "
            "configs/config.yaml)")


def _flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    for k in cfg.keys() if hasattr(cfg, "keys") else []:
        full = f"{prefix}{k}"
        try:
            child = cfg[k]
        except Exception:  # noqa: BLE001 - an unresolvable interpolation: the key exists all the same
            child = None
        out.append(full)
        if hasattr(child, "keys"):
            out += _flat_keys(child, full + ".")
    return out


def check_syntax(overrides: list[str]) -> None:
    """What Hydra would accept but then fail on with a Python error: an override without a key."""
    for text in overrides:
        stripped = text.lstrip("+~")
        if stripped.startswith("=") or not stripped.strip():
            raise ConfigError(f"override {text!r} has no key", fix="write key=value, e.g. eval.num_shards=8")


def check_unread(overrides: list[str], compose_base: Callable[[list[str]], Any]) -> None:
    """Refuse added keys that nothing reads and deleted keys that the code needs.

    ``compose_base`` composes the config without the adding/deleting overrides (called only when there
    are any), to tell a key the defaults already have from one the override invents."""
    parsed = _parse(overrides)
    risky = [(o, text) for o, text in zip(parsed, overrides, strict=True)
             if (o.is_add() or o.is_force_add() or o.is_delete())
             and not any(o.key_or_group.startswith(m + ".") or o.key_or_group == m for m in OPEN_MAPS)]
    if not risky:
        return
    keep = [text for o, text in zip(parsed, overrides, strict=True)
            if not (o.is_add() or o.is_force_add() or o.is_delete())]
    base = compose_base(keep)
    for o, text in risky:
        key = o.key_or_group
        if _in_open_map(base, key):
            continue
        exists, _ = _lookup(base, key)
        if o.is_delete():
            raise ConfigError(f"`{text}` deletes `{key}`, which grail-cluster reads",
                              fix=f"set it instead (`{key}=null` where null is allowed, or `{key}=<value>`)")
        if not exists:
            raise ConfigError(f"`{text}` adds `{key}`, which grail-cluster never reads: the run would ignore it",
                              fix=_fix_for(key, text, base))
