"""Sweeps: a Hydra multirun (``-m a=1,2 b=range(3)``, or a sweep file) expanded into training points.

A sweep is one run. Its train stage is an array with one index per point: each point is a
training run with its own experiment dir, its own command line and its own W&B run, all in one
W&B group (the run id). Select ranks the checkpoints of every point together, and eval, render,
export, merge and web of the winners are planned once for the sweep. So points may differ only in
what training reads (``train.*``, ``resources.train.*``, ``sonic.extra_overrides``): a sweep over
the data or the eval settings is several runs, not one, and is refused with that advice.

Expansion is Hydra's own (``BasicSweeper.split_arguments``), so comma lists, ``range()``,
``choice()`` and quoting behave exactly as with ``python train_agent_trl.py -m``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import ConfigError

# What a point may change: everything the training job reads, nothing the shared downstream reads.
POINT_PREFIXES = ("train.", "resources.train.", "sonic.extra_overrides")
# Fixed per sweep even though they live under train.: one switch for the stage, and the experiment
# dirs the sweep assigns itself.
FIXED_TRAIN_KEYS = ("train.enabled", "train.experiment_dir")
# Points with different values here would need different allocations; one array has one.
RESOURCE_KEYS = ("train.nodes", "train.gpus_per_node", "train.device", "resources.train.")


@dataclass
class Sweep:
    base: list[str]  # overrides every point shares
    swept: list[list[str]]  # per point: the overrides that vary (already expanded)

    @property
    def points(self) -> list[list[str]]:
        return [self.base + s for s in self.swept]

    @staticmethod
    def label(swept: list[str]) -> str:
        return " ".join(swept)


_FILE_EXAMPLE = "e.g. params: {train.seed: '1,2,3', ++train.overrides.algo.config.learning_rate: [1e-3, 3e-4]}"


def _sweep_value(item: Any, key: str, path: Path) -> str:
    """One value of a YAML list as Hydra reads it: YAML null is Hydra's null (not the string "None"), and
    a string holding a comma is quoted so that it stays one value instead of becoming several points."""
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return repr(item)
    if isinstance(item, str):
        if not any(c in item for c in ",'\"()[]{}= "):
            return item
        if "'" not in item:
            return f"'{item}'"
    raise ConfigError(f"params.{key}: the value {item!r} cannot be passed to Hydra as one sweep value", path=path,
                      fix="use numbers, plain strings (quoted strings may hold commas but not quotes), true/false "
                          "or null; nested lists and mappings are not sweep values")


def _file_overrides(path: str) -> list[str]:
    """``params:`` (key -> "a,b" or a list, as Hydra's ``hydra.sweeper.params``) and ``overrides:``."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except IsADirectoryError:
        raise ConfigError("the sweep file is a directory", path=p, fix=f"pass a YAML file: {_FILE_EXAMPLE}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the sweep file: {exc.strerror}", path=p,
                          fix="pass the path of a YAML sweep file (--sweep-file FILE)") from None
    except UnicodeDecodeError:
        raise ConfigError("the sweep file is not text", path=p, fix=f"pass a YAML file: {_FILE_EXAMPLE}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConfigError(f"the sweep file is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}", path=p,
                          fix=f"fix the YAML; {_FILE_EXAMPLE}") from None
    if not isinstance(data, dict) or not set(data) <= {"params", "overrides"} or not data:
        raise ConfigError("a sweep file holds `params:` (key: a,b,c) and optionally `overrides:` (a list)", path=p,
                          fix=_FILE_EXAMPLE)
    params = data.get("params") or {}
    fixed = data.get("overrides") or []
    if not isinstance(params, dict) or not isinstance(fixed, list):
        raise ConfigError("`params` must be a mapping and `overrides` a list", path=p, fix=_FILE_EXAMPLE)
    bad = [o for o in fixed if not isinstance(o, str)]
    if bad:
        raise ConfigError(f"`overrides` entries must be strings like key=value, got {bad[0]!r}", path=p,
                          fix="quote each entry: overrides: ['pipeline=pnp_ground', 'train.seed=1']")
    out = list(fixed)
    for key, value in params.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ConfigError(f"params key {key!r} is not a config key", path=p, fix=_FILE_EXAMPLE)
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"params.{key} is an empty list: a sweep over nothing", path=p,
                                  fix=f"give {key} at least one value, or remove it")
            value = ",".join(_sweep_value(v, key, p) for v in value)
        elif value is None or isinstance(value, dict) or (isinstance(value, str) and not value.strip()):
            raise ConfigError(f"params.{key} has no values ({value!r})", path=p,
                              fix=f"{key}: 'a,b,c' or a YAML list [a, b, c]")
        out.append(f"{key}={value}")
    return out


def expand(overrides: list[str], sweep_file: str | None = None) -> Sweep:
    """Hydra's multirun expansion of the command line (and the sweep file's params)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    every = list(overrides) + (_file_overrides(sweep_file) if sweep_file else [])
    try:
        parsed = OverridesParser.create().parse_overrides(every)
        batches = BasicSweeper.split_arguments(parsed, None)
    except HydraException as exc:
        raise ConfigError(f"cannot expand the sweep: {str(exc).splitlines()[0]}", path=sweep_file,
                          fix="sweep values as Hydra takes them: key=a,b,c or key=range(1,4) or key=choice(a,b)") from None
    points = batches[0] if batches else [[]]
    # Hydra keeps one value per key (the last override of a key wins), so match by key, not position.
    swept_keys = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    if not swept_keys:
        if sweep_file:
            raise ConfigError("the sweep file's params give one value each: nothing to sweep", path=sweep_file,
                              fix="give a param several values (train.seed: '1,2,3'), or run without --sweep-file")
        raise ConfigError("-m was given but no override sweeps (nothing like key=a,b)",
                          fix="add a comma list or range(), e.g. train.seed=1,2,3; or drop -m for a single run")
    base = [ov for ov in points[0] if ov.split("=", 1)[0] not in swept_keys]
    swept = [[ov for ov in point if ov.split("=", 1)[0] in swept_keys] for point in points]
    return Sweep(base, swept)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def _varies(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p.rstrip(".") or key.startswith(p) for p in prefixes)


def check_points(configs: list[dict[str, Any]], sweep: Sweep) -> None:
    """Points may differ only in what training reads, and not in its allocation."""
    first = flatten(configs[0])
    for n, cfg in enumerate(configs[1:], start=1):
        flat = flatten(cfg)
        for key in sorted(set(first) | set(flat)):
            if first.get(key, "<unset>") == flat.get(key, "<unset>"):
                continue
            what = Sweep.label(sweep.swept[n])
            if not _varies(key, POINT_PREFIXES) or _varies(key, FIXED_TRAIN_KEYS):
                raise ConfigError(
                    f"sweep point {n} ({what}) changes `{key}`, which the sweep's shared select/eval/export "
                    "plan reads", fix="sweep only training settings (train.*, resources.train.*, "
                                      "++train.overrides.<SONIC key>, sonic.extra_overrides); run one sweep per "
                                      f"value of {key}")
            if _varies(key, RESOURCE_KEYS):
                raise ConfigError(
                    f"sweep point {n} ({what}) changes `{key}`: the points of a sweep share one array, so "
                    "one allocation", fix=f"run one sweep per value of {key}")


def point_name(point: int) -> str:
    return f"p{point:03d}"
