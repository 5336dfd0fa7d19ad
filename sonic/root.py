"""Checks of the SONIC checkout (``sonic.root``) before anything is planned or submitted.

A run that reaches the cluster with a wrong ``sonic.root`` fails minutes later in every job (or
hours later, for the eval array behind training), so ``plan``/``run``/``render`` refuse it up front
and ``doctor`` lists it:

- ``sonic.root`` is a directory holding the trainer (``gear_sonic/train_agent_trl.py``, or the
  top-level ``train_agent_trl.py`` of the older docs) and the evaluator (``eval_agent_trl.py``);
- a fine-tune (``train.finetune.checkpoint``: a path relative to ``sonic.root`` as SONIC resolves
  ``models/...``, an absolute path, or ``release`` = the release config's warm-start checkpoint)
  names a file that exists;
- a pipeline whose ``exp`` is not a release config gets a warning only (private configs are fine).

Config paths such as ``models/...`` are relative to the SONIC root because SONIC runs from there
(contracts §2.1); the train job ``cd``s there too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grail_cluster.core.doctor import Problem
from grail_cluster.core.errors import ConfigError
from grail_cluster.sonic import registry

TRAINER = "train_agent_trl.py"
EVALUATOR = "eval_agent_trl.py"
EXP_CONFIG_DIR = "gear_sonic/config/exp"


def find_script(root: str | Path, setting: str | None, name: str) -> Path | None:
    """The script SONIC would run: ``auto`` = ``gear_sonic/<name>`` else ``<name>``; an explicit
    setting is relative to the root unless absolute. None when it is not there."""
    root = Path(root).expanduser()
    if setting and setting != "auto":
        p = Path(setting).expanduser()
        p = p if p.is_absolute() else root / p
        return p if p.is_file() else None
    for candidate in (root / "gear_sonic" / name, root / name):
        if candidate.is_file():
            return candidate
    return None


def exp_config_path(root: str | Path, exp: str) -> Path:
    """Where SONIC keeps the ``+exp=`` config: ``gear_sonic/config/exp/<exp>.yaml`` (``exp`` as
    passed on the command line: grail-cluster renders ``+exp={pipeline.exp}`` verbatim)."""
    name = exp.strip().removesuffix(".yaml").strip("/")
    return Path(root).expanduser() / EXP_CONFIG_DIR / f"{name}.yaml"


def _uses_base(exp_yaml: Path | None) -> bool:
    """Whether the config builds on the frozen SONIC base: the release HOI configs do (§2.3); a
    root whose own copy of the config does not name it (e.g. the CPU reference tracker) does not."""
    if exp_yaml is None or not exp_yaml.is_file():
        return True
    try:
        return "sonic_manipulation_base" in exp_yaml.read_text(errors="replace")
    except OSError:
        return True


def release_checkpoint(pipeline: dict[str, Any]) -> str | None:
    """``train.finetune.checkpoint=release``: the pipeline's checkpoint, else the registry's."""
    if pipeline.get("finetune_checkpoint"):
        return str(pipeline["finetune_checkpoint"])
    rel = registry.lookup(pipeline.get("exp"))
    return rel.finetune_checkpoint if rel else None


def finetune_path(sonic_root: str | Path, checkpoint: str) -> Path:
    """Where SONIC finds ``++checkpoint=<checkpoint>``: relative paths are relative to its root."""
    p = Path(os.path.expanduser(checkpoint))
    return p if p.is_absolute() else Path(sonic_root).expanduser() / p


def sonic_problems(root: str | Path | None, *, pipeline: dict[str, Any] | None = None,
                   finetune: str | None = None, train_script: str | None = "auto",
                   eval_script: str | None = "auto", need_trainer: bool = True,
                   need_evaluator: bool = True) -> list[Problem]:
    """Every problem of a SONIC checkout for a pipeline, as doctor rows (error | warn)."""
    pipeline = pipeline or {}
    out: list[Problem] = []
    name = pipeline.get("name")
    exp = pipeline.get("exp")
    if exp and (warning := registry.unknown_exp_warning(exp)):
        where = exp_config_path(root or ".", exp)
        out.append(Problem("warn", "sonic_exp", str(where), warning,
                           "nothing to do for a private config; otherwise fix pipeline.exp"))
    if not root:
        return out
    root = Path(root).expanduser()
    if not root.is_dir():
        out.append(Problem("error", "sonic_root", str(root), "sonic.root is not a directory",
                           "set sonic.root to the imports/SONIC directory of the GRAIL checkout (the one holding "
                           "gear_sonic/)"))
        return out
    for needed, setting, script, what in ((need_trainer, train_script, TRAINER, "trainer"),
                                          (need_evaluator, eval_script, EVALUATOR, "evaluator")):
        if not needed or find_script(root, setting, script):
            continue
        key = "sonic.train_script" if script == TRAINER else "sonic.eval_script"
        if setting and setting != "auto":
            where, problem = finetune_path(root, setting), f"{key}={setting} does not exist (the SONIC {what})"
        else:
            where = root / "gear_sonic" / script
            problem = f"the SONIC {what} is missing: neither gear_sonic/{script} nor {script} is in sonic.root"
        out.append(Problem("error", "sonic_root", str(where), problem,
                           f"point sonic.root at imports/SONIC (it must hold gear_sonic/{script}), or set {key}"))
    if need_trainer and finetune:
        ckpt = finetune
        if finetune == "release":
            ckpt = release_checkpoint(pipeline)
            if not ckpt:
                with_release = ", ".join(r.name for r in registry.RELEASE_CONFIGS if r.finetune_checkpoint)
                out.append(Problem("error", "finetune", str(root / "models"),
                                   f"train.finetune.checkpoint=release, but pipeline {name} has no release warm-start "
                                   f"checkpoint (only {with_release} have one)",
                                   "pass train.finetune.checkpoint=<file relative to sonic.root>, or drop it to train "
                                   "from scratch"))
                ckpt = None
        if ckpt:
            path = finetune_path(root, ckpt)
            if not path.is_file():
                rel = ckpt if not Path(ckpt).is_absolute() else None
                source = (f"download {registry.HF_MODELS_PREFIX}{rel} from the Hugging Face dataset "
                          f"{registry.HF_DATASET} to {path}, or " if rel and rel.startswith("models/") else "")
                out.append(Problem("error", "finetune", str(path),
                                   f"fine-tune checkpoint {ckpt} not found (train.finetune.checkpoint="
                                   f"{finetune}; relative paths are relative to sonic.root)",
                                   f"{source}set train.finetune.checkpoint to an existing last.pt / model_step_*.pt"))
    exp_yaml = exp_config_path(root, exp) if exp else None
    if exp_yaml is not None and (root / EXP_CONFIG_DIR).is_dir() and not exp_yaml.is_file():
        out.append(Problem("warn", "sonic_exp", str(exp_yaml),
                           f"sonic.root has no config for +exp={exp}: Hydra will refuse it "
                           "unless it comes from another config search path",
                           "check pipeline.exp, or add the config under gear_sonic/config/exp/"))
    release = registry.lookup(exp)
    if need_trainer and release is not None and release.kind == "hoi" and _uses_base(exp_yaml):
        base = root / "models" / "sonic_manipulation_base"
        missing = [f for f in ("model_config.yaml", "last.pt") if not (base / f).is_file()]
        if missing:
            out.append(Problem("warn", "sonic_base", str(base / missing[0]),
                               f"{release.short_exp} builds on the frozen SONIC base models/sonic_manipulation_base/"
                               f"{{model_config.yaml,last.pt}}; missing: {', '.join(missing)}",
                               f"download {registry.HF_MODELS_PREFIX}models/sonic_manipulation_base/ from "
                               f"{registry.HF_DATASET} into {base}, unless your overrides point elsewhere"))
    return out


def config_problems(c: dict[str, Any]) -> list[Problem]:
    """:func:`sonic_problems` for a resolved grail-cluster configuration.

    Rehearsal runs never start SONIC (their jobs only ``cd`` into the root), so only the root is
    checked for them. The trainer and the fine-tune checkpoint matter only when training runs.
    """
    sonic = c.get("sonic") or {}
    rehearsal = bool((c.get("rehearsal") or {}).get("enabled"))
    train = c.get("train") or {}
    trains = bool(train.get("enabled", True)) and not (c.get("select") or {}).get("checkpoints")
    finetune = (train.get("finetune") or {}).get("checkpoint")
    return sonic_problems(sonic.get("root"), pipeline=c.get("pipeline") or {},
                          finetune=None if rehearsal else finetune,
                          train_script=sonic.get("train_script", "auto"), eval_script=sonic.get("eval_script", "auto"),
                          need_trainer=trains and not rehearsal, need_evaluator=not rehearsal)


def check_sonic(c: dict[str, Any]) -> list[str]:
    """Raise a ConfigError (naming the file and the fix) for the first SONIC problem; return the
    warnings as plan warning lines."""
    problems = config_problems(c)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        first = errors[0]
        more = f" (+{len(errors) - 1} more SONIC problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(first.problem + more, path=first.path, fix=first.fix)
    return [f"sonic: {p.problem}" for p in problems if p.severity == "warn"]
