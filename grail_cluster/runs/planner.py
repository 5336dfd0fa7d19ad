"""Planning: config + library index in, the hashed :class:`~grail_cluster.core.plan.RunPlan` out.

The stages, their order and their dependencies come from :mod:`grail_cluster.stages.registry`;
this module adds what is computed across stages: training ranks, eval shards, the run id and the
checks that would otherwise fail only after the training ran.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from grail_cluster import __version__
from grail_cluster.backends.slurm import sinfo_nodes
from grail_cluster.core.doctor import Problem, diagnose, has_errors, parse_allow
from grail_cluster.core.errors import ConfigError, DataError
from grail_cluster.core.library import LibraryIndex
from grail_cluster.core.plan import (
    PLAN_VERSION,
    EvalShard,
    RunPlan,
    StagePlan,
    TrainRank,
    canonical_json,
    content_hash,
)
from grail_cluster.core.plan_checks import check_partition
from grail_cluster.core.settings import Settings, settings
from grail_cluster.core.sharding import balance, make_shards
from grail_cluster.core.sweep import point_name
from grail_cluster.sonic import commands as sonic_cmd
from grail_cluster.sonic import slicing
from grail_cluster.sonic.root import check_sonic
from grail_cluster.stages import registry
from grail_cluster.stages.train import train_argv


def _stages(cs: Settings, k: int, n: int, train_enabled: bool, points: int = 1) -> list[StagePlan]:
    """The registry's stages this run has, in registry order, each sized and wired by its own rules."""
    chosen = [s for s in registry.STAGES if s.enabled(cs, train_enabled)]
    names = {s.name for s in chosen}
    return [StagePlan(s.name, s.size(k, n, points), s.depends_on(names), s.resources(cs), requeue=s.requeue)
            for s in chosen]


def _library_summary(index: LibraryIndex, cs: Settings) -> dict[str, Any]:
    return {
        "root": index.root,
        "layout": index.layout,
        "num_motions": len(index.motions),
        "total_frames": sum(m.frames or 0 for m in index.motions),
        "fingerprint": index.fingerprint(),
        "usd_dir": index.usd_dir,
        "bps_dir": index.bps_dir,
        "flat_placeholder": cs.data.flat_usd_path or index.flat_placeholder,
        "root_rot": sorted({m.root_rot for m in index.motions}),
    }


def _train_ranks(cs: Settings, index: LibraryIndex, usd_of: dict[str, str], warnings: list[str]) -> dict[str, Any]:
    tr = cs.train
    nodes, gpus = tr.nodes, tr.gpus_per_node
    world = nodes * gpus
    num_envs = 4 if tr.smoke else tr.num_envs
    keys = sorted(index.keys)
    ranks: list[TrainRank] = []
    out: dict[str, Any] = {"world_size": world, "nodes": nodes, "gpus_per_node": gpus, "num_envs_per_process": num_envs}
    if index.layout == "terrain":
        ratio = int(cs.pipeline.flat_to_terrain_ratio or 0)
        n_terrain = slicing.terrain_envs(num_envs, ratio)
        for rank in range(world):
            idx = slicing.terrain_window(len(keys), num_envs, ratio, rank)
            rk = [keys[i] for i in idx]
            ranks.append(TrainRank(rank, rank // gpus, rank % gpus, rk, [usd_of.get(k, "") for k in rk],
                                   window_start=(rank * n_terrain) % len(keys) if keys else 0))
        never = slicing.terrain_never_trained(len(keys), num_envs, ratio, world)
        out.update(slicing="terrain_window", flat_to_terrain_ratio=ratio, terrain_envs_per_process=n_terrain,
                   never_trained=never)
        if never:
            warnings.append(
                f"terrain slicing: {never} of {len(keys)} motion keys are never trained "
                f"({world} ranks x {n_terrain} terrain envs = {world * n_terrain} windows); "
                f"raise train.num_envs to at least {-(-len(keys) // world) * (ratio + 1)} or use more GPUs"
            )
    else:
        unused = 0
        for s in slicing.hoi_rank_slices(keys, world, num_envs):
            ranks.append(TrainRank(s.rank, s.rank // gpus, s.rank % gpus, s.motion_keys,
                                   [usd_of.get(k, "") for k in s.motion_keys], start=s.start, stop=s.stop,
                                   unused_past_num_envs=s.unused_past_num_envs))
            unused += s.unused_past_num_envs
        empty = [r.rank for r in ranks if not r.motion_keys]
        out.update(slicing="hoi_block", never_trained=unused)
        if unused:
            warnings.append(
                f"HOI slicing: {unused} motions sit past num_envs={num_envs} on their rank and are never used; "
                f"raise train.num_envs to {max(len(r.motion_keys) for r in ranks)} or use more GPUs"
            )
        if empty:
            warnings.append(f"HOI slicing: ranks {empty} get no motions ({len(keys)} motions for {world} ranks)")
    out["ranks"] = [asdict(r) for r in ranks]
    return out


def _eval_plan(cs: Settings, index: LibraryIndex, k: int) -> dict[str, Any]:
    ev = cs.eval
    n = ev.num_shards
    keys = sorted(index.keys)
    if n > len(keys):
        raise ConfigError(f"eval.num_shards={n} is more than the {len(keys)} motions of the library",
                          fix=f"set eval.num_shards to at most {len(keys)}")
    frames = {m.key: int(m.frames or 0) for m in index.motions}
    shards = make_shards(ev.sharding, keys, frames, n)
    terrain = index.layout == "terrain"
    out_shards = []
    for s in shards:
        size = len(s.motion_keys)
        if terrain:
            # The terrain slicer takes a window of num_envs keys: exactly the shard, no wrap-around.
            num_envs = size
        else:
            num_envs = ev.num_envs or size
            if num_envs < size:
                # SONIC's blocks hold at most ceil(T/N) keys, so N = ceil(T/num_envs) shards fit; the
                # frame-balanced packing does not bound key counts, so it is offered only with sonic_block.
                shards_needed = -(-len(keys) // num_envs)
                also = "" if ev.sharding == "sonic_block" else " with eval.sharding=sonic_block"
                raise ConfigError(
                    f"eval.num_envs={num_envs} is smaller than shard {s.shard} ({size} motions): SONIC needs one "
                    "batch per shard (num_envs >= shard size), or dynamic per-env USDs get the wrong collision meshes",
                    fix=f"eval.num_envs={max(len(x.motion_keys) for x in shards)} (or null: the largest shard), or "
                        f"eval.num_shards={shards_needed}{also}")
        if ev.sharding == "sonic_block" and not terrain:
            overrides = sonic_cmd.block_shard_overrides(n, s.shard)
        else:
            overrides = sonic_cmd.keys_shard_overrides(s.motion_keys)
        out_shards.append(EvalShard(s.shard, s.motion_keys, s.frames, num_envs, overrides))
    total = sum(s.frames for s in shards)
    return {
        "strategy": ev.sharding,
        "num_checkpoints": k,
        "num_shards": n,
        "size": k * n,
        "index_rule": "index = checkpoint_rank * num_shards + shard",
        "total_frames": total,
        "ideal_frames": total / n,
        "max_shard_frames": max(s.frames for s in shards),
        "balance": round(balance(shards), 6),
        "shards": [asdict(s) for s in out_shards],
    }


def _run_id(c: dict[str, Any], index: LibraryIndex, points: list[dict[str, Any]] | None = None) -> str:
    """``c`` is the composed dict: the id hashes exactly what the user composed."""
    cs = settings(c)
    if cs.run.id:
        return str(cs.run.id)
    inputs = {k: v for k, v in c.items() if k != "run"}
    if points is None:
        digest = hashlib.sha256(canonical_json([inputs, index.fingerprint()]).encode()).hexdigest()
        return f"{cs.pipeline.name}-{digest[:8]}"
    digest = hashlib.sha256(canonical_json([inputs, points, index.fingerprint()]).encode()).hexdigest()
    return f"{cs.pipeline.name}-sweep-{digest[:8]}"


def _sweep_train(c: dict[str, Any], index: LibraryIndex, usd_of: dict[str, str], warnings: list[str],
                 sweep: dict[str, Any], exp_root: str, group: str) -> dict[str, Any]:
    """Per point: its swept overrides, its own experiment dir, its train settings and its rank slices;
    ``group`` is the W&B group every point logs into."""
    points = []
    for n, (cfg, swept) in enumerate(zip(sweep["configs"], sweep["swept"], strict=True)):
        own: list[str] = []
        ranks = _train_ranks(settings(cfg), index, usd_of, own)
        warnings += [f"sweep point {n}: {w}" for w in own]
        points.append({
            "point": n, "name": point_name(n), "overrides": list(swept),
            "experiment_dir": os.path.join(exp_root, point_name(n)),
            # What this point's training reads differently from the run's config (sweep.check_points
            # guarantees nothing else differs).
            "config": {"train": cfg["train"], "resources": {"train": cfg["resources"]["train"]},
                       "sonic": {"extra_overrides": cfg["sonic"].get("extra_overrides") or []}},
            **ranks,
        })
    return {"points": points, "world_size": points[0]["world_size"], "group": group}


def check_library(index: LibraryIndex, c: dict[str, Any]) -> list[Problem]:
    cs = settings(c)
    # The composed needs as given: doctor fills a missing level with "no", the schema with its default.
    problems = diagnose(index, c["pipeline"].get("needs"), cs.pipeline.name, parse_allow(cs.data.allow))
    if has_errors(problems):
        first = next(p for p in problems if p.severity == "error")
        n = sum(1 for p in problems if p.severity == "error")
        raise DataError(
            f"the motion library is not ready for {cs.pipeline.name} ({n} problem{'s' if n > 1 else ''}); first: {first.problem}",
            path=first.path,
            fix=f"{first.fix}; run `grail-cluster doctor {index.root} pipeline={cs.pipeline.name}` for the full list",
        )
    return problems


def build_plan(c: dict[str, Any], index: LibraryIndex, *, provenance: dict[str, Any] | None = None,
               sweep: dict[str, Any] | None = None) -> RunPlan:
    """Pure: the same config, library and provenance sources give the same plan and the same hash.

    ``provenance`` is :func:`grail_cluster.core.provenance.sources` (SONIC commit, BPS hash, image,
    version), collected by the caller because it reads git and files. It is part of the hash on
    purpose: jobs rendered against one SONIC commit (or BPS set) must not run on another, and a
    re-plan after ``git pull`` in sonic.root is refused by ``submit`` for the old run dir instead
    of mixing checkpoints of two code versions in one run. It holds no timestamps or host names, so
    the hash stays stable for unchanged inputs.

    ``sweep`` (``{"configs": [...], "swept": [[...], ...]}``, from :mod:`grail_cluster.core.sweep`) makes the
    train stage one index per point; ``c`` is then the first point's config.
    """
    cs = settings(c)
    pipeline = cs.pipeline
    if (index.layout == "terrain") != (pipeline.kind == "terrain"):
        raise ConfigError(
            f"pipeline {pipeline.name} expects a {pipeline.kind} library but {index.root} looks like a "
            f"{index.layout} library",
            fix="pick the matching pipeline (terrain_tracking for terrain roots with flat_placeholder.usd)",
        )
    # The SONIC checkout: trainer, evaluator, fine-tune checkpoint (errors), private exp (warning).
    sonic_warnings = check_sonic(c)
    problems = check_library(index, c)
    warnings = [f"library: {p.problem}" for p in problems if p.severity == "warn"] + sonic_warnings

    explicit = list(cs.select.checkpoints or [])
    train_enabled = bool(cs.train.enabled) and not explicit
    k = len(explicit) if explicit else cs.select.k
    if sweep and not train_enabled:
        raise ConfigError("a sweep trains one run per point, but training is off (train.enabled=false or "
                          "select.checkpoints set)", fix="drop -m, or enable training")
    if sweep and cs.cluster.backend == "kubernetes" and cs.train.nodes > 1:
        # Multi-node training already uses the Indexed Job's index as the machine rank.
        raise ConfigError("a sweep of multi-node points cannot share one Indexed Job on Kubernetes",
                          fix="train.nodes=1 for the sweep, or cluster=slurm (one array of multi-node tasks)")
    # The points' own composed values, hashed as given (the run id).
    point_inputs = [{"train": x["train"], "resources": x["resources"]["train"],
                     "sonic": x["sonic"].get("extra_overrides")} for x in sweep["configs"]] if sweep else None
    run_id = _run_id(c, index, point_inputs)
    run_dir = str(Path(cs.run.root).expanduser().resolve() / run_id)
    if sweep and cs.train.experiment_dir:
        raise ConfigError("train.experiment_dir cannot be set for a sweep: each point gets its own",
                          fix="drop train.experiment_dir; points write <run dir>/experiments/p000, p001, ...")
    exp_dir = cs.train.experiment_dir or os.path.join(run_dir, "experiments" if sweep else "experiment")
    usd_of = {m.key: m.usd or index.shared_usd or "" for m in index.motions}

    if not train_enabled:
        train = {"world_size": 0, "ranks": []}
    elif sweep:
        train = _sweep_train(c, index, usd_of, warnings, sweep, exp_dir, run_id)
    else:
        train = _train_ranks(cs, index, usd_of, warnings)
    plan = RunPlan(
        version=PLAN_VERSION,
        run_id=run_id,
        run_dir=run_dir,
        grail_cluster_version=__version__,
        pipeline=dict(sorted(c["pipeline"].items())),  # the composed group as given (plan.json, the hash)
        backend=cs.cluster.backend,
        library=_library_summary(index, cs),
        paths={
            "run_dir": run_dir,
            "experiment_dir": exp_dir,
            "selection": os.path.join(run_dir, "select", "selection.json"),
            "eval_dir": os.path.join(exp_dir, "eval"),
            "export_dir": os.path.join(exp_dir, "exported"),
            "web_dir": os.path.join(run_dir, "web"),
            "specs_dir": os.path.join(run_dir, "specs"),
            "logs_dir": os.path.join(run_dir, "logs"),
        },
        stages=_stages(cs, k, cs.eval.num_shards, train_enabled, len(sweep["configs"]) if sweep else 1),
        train=train,
        eval={**_eval_plan(cs, index, k), "checkpoints": explicit},
        config=c,
        warnings=warnings,
        provenance=dict(provenance or {}),
    )
    if sweep:
        # Each winner's results go under its own point's experiment dir (stages.checkpoints.results_dir).
        del plan.paths["eval_dir"], plan.paths["export_dir"]
    if train_enabled:
        check_checkpoint_count(plan, k)
    plan.plan_hash = content_hash(plan.to_json())
    return plan


# ----------------------------------------------------------------------------- checkpoints the training writes

# SONIC's model-save callback reads callbacks.model_save.save_frequency, and only that key (contracts
# §2.2); the reference tracker reads the same one. algo.config.save_frequency is read by neither.
SAVE_PERIOD_KEY = "callbacks.model_save.save_frequency"
UNREAD_SAVE_PERIOD_KEY = "algo.config.save_frequency"
ITERATIONS_KEY = "algo.config.num_learning_iterations"


def _rendered_values(argv: list[str], key: str) -> list[str]:
    """Values given to ``key`` on a Hydra command line (``key=``, ``+key=``, ``++key=``), in order."""
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if sep and name.lstrip("+") == key:
            out.append(value)
    return out


def training_schedule(argv: list[str], pipeline: dict[str, Any]) -> tuple[int | None, int | None, str]:
    """(iterations, save period, where they came from) of one rendered training command.

    Read from the command line the plan renders, so the count follows whatever keys the launcher
    writes; what it leaves out is the release ``+exp`` config's default (the pipeline's). As in Hydra,
    the last value given to a key is the one the trainer sees. A period given only under
    ``algo.config.save_frequency`` is refused: SONIC would keep saving every 500 iterations."""
    its = _rendered_values(argv, ITERATIONS_KEY)
    periods = _rendered_values(argv, SAVE_PERIOD_KEY)
    unread = _rendered_values(argv, UNREAD_SAVE_PERIOD_KEY)
    if unread:
        raise ConfigError(f"{UNREAD_SAVE_PERIOD_KEY}={unread[-1]} is on the training command line, but SONIC never "
                          f"reads that key: its checkpoints would stay at {SAVE_PERIOD_KEY}'s value",
                          fix=f"train.save_frequency={unread[-1]} (renders ++{SAVE_PERIOD_KEY}), or "
                              f"++train.overrides.{SAVE_PERIOD_KEY}={unread[-1]}")
    try:
        iterations = int(its[-1]) if its else pipeline.get("iterations")
        period = int(periods[-1]) if periods else pipeline.get("save_frequency")
    except ValueError:
        return None, None, "a non-integer iterations or save_frequency on the command line"
    source = "command line" if its or periods else "release config"
    return iterations, period, source


def checkpoints_written(iterations: int, period: int) -> int:
    """``model_step`` files of one training: every ``period`` iterations, plus the last iteration's
    (the reference tracker saves and evaluates it; SONIC's ``last.pt``) when it falls between saves."""
    return -(-iterations // period)


def check_checkpoint_count(plan: RunPlan, k: int) -> None:
    """select.k above what the training can write fails at select, after the whole training ran."""
    points = range(len(plan.train["points"])) if plan.is_sweep else range(1)
    total = 0
    detail = []
    for n in points:
        iterations, period, source = training_schedule(train_argv(plan, n), plan.pipeline)
        if not iterations or not period or iterations < 1 or period < 1:
            return  # the trainer decides; nothing certain to check against
        written = checkpoints_written(iterations, period)
        total += written
        detail.append(f"{iterations} iterations / save every {period} ({source}) = {written}")
    if k <= total:
        return
    where = f"{len(detail)} sweep points: " + "; ".join(detail) if plan.is_sweep else detail[0]
    need_period = max(1, iterations // k) if not plan.is_sweep else None
    fix = f"select.k={total}"
    if need_period:
        fix += (f", or save more often: train.save_frequency={need_period} "
                f"(or train.iterations={k * period})")
    raise ConfigError(f"select.k={k} but the training writes at most {total} checkpoint(s) ({where}); "
                      "select would fail after the whole training ran", fix=fix)


def check_cluster(plan: RunPlan) -> list[str]:
    """The scheduler-side checks of ``plan``'s backend: notes to print, or a ConfigError."""
    if plan.backend != "slurm":
        return []
    if not plan.settings.cluster.check_limits:  # a slurm plan: SlurmCluster
        return ["cluster.check_limits=false: partition limits not checked"]
    text, why = sinfo_nodes()
    if text is None:
        return [why or "partition limits not checked"]
    return check_partition(plan, text)
