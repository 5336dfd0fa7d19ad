"""The in-job entry point: ``python -m grail_cluster.entry <stage> --run-dir R --index I``.

A job never re-derives its work from scheduler arithmetic: it reads its slice from plan.json,
refuses to run against a plan that changed since the job was rendered, does its work, and writes
the stage's success marker.
"""

from __future__ import annotations

import argparse
import os
import sys

from grail_cluster.core.errors import EXIT_USAGE, DataError, GrailError
from grail_cluster.core.markers import file_digest, validate_marker, write_marker
from grail_cluster.core.plan import RunPlan, read_plan


def _train(plan: RunPlan, index: int) -> int:
    """After SONIC's trainer exits 0: the experiment dir must hold checkpoints, then mark done."""
    exp = plan.experiment_dir(index)
    from grail_cluster.sonic.experiment import list_checkpoints

    ckpts = [c.path for c in list_checkpoints(exp)]
    if not ckpts:
        raise DataError("training exited 0 but wrote no model_step_*.pt or last.pt", path=exp,
                        fix="check the trainer log (logs/train/0/) and that ++experiment_dir reached SONIC")
    outputs = {os.path.abspath(p): {"size": os.path.getsize(p), "sha256_head_tail": file_digest(p, full=False)}
               for p in ckpts}
    write_marker(plan.run_dir, "train", index, plan.plan_hash, outputs)
    print(f"[grail] train done: {len(ckpts)} checkpoint(s) in {exp}")
    return 0


def _digests(paths) -> dict[str, dict]:
    """A marker's outputs: size and sha256 of each file the stage produced."""
    return {p: {"size": os.path.getsize(p), "sha256": file_digest(p)} for p in paths}


AUDIT_MODES = ("enforce", "warn", "off")
AUDIT_TIMEOUT_S = 900.0  # SONIC logs its slices while loading the library, well inside this


def _audit_settings() -> tuple[str, float]:
    """GRAIL_SLICE_AUDIT (enforce|warn|off) and GRAIL_SLICE_AUDIT_TIMEOUT_S, set through job.env."""
    mode = os.environ.get("GRAIL_SLICE_AUDIT", "enforce").strip().lower() or "enforce"
    if mode not in AUDIT_MODES:
        raise GrailError(f"GRAIL_SLICE_AUDIT={mode!r} is not one of {', '.join(AUDIT_MODES)}",
                         fix="job.env.GRAIL_SLICE_AUDIT=enforce (stop on a mismatch), warn (record only) or off")
    raw = os.environ.get("GRAIL_SLICE_AUDIT_TIMEOUT_S", "")
    try:
        timeout = float(raw) if raw.strip() else AUDIT_TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise GrailError(f"GRAIL_SLICE_AUDIT_TIMEOUT_S={raw!r} is not a positive number of seconds",
                         fix="job.env.GRAIL_SLICE_AUDIT_TIMEOUT_S=900")
    return mode, timeout


def _run_child(argv: list[str], cwd: str, plan: RunPlan, stage: str, index: int) -> int:
    """Run SONIC as a child (not exec) under the slice audit: its outputs are checked and marked after
    it exits, and a slice that disagrees with plan.json stops it early (``slice_watch``).

    SIGTERM/SIGINT/USR1/USR2/HUP (scancel, SLURM's warning, preemption, Ctrl-C) are passed on.
    """
    from grail_cluster.stages import slice_audit
    from grail_cluster.stages.slice_watch import run_watched

    mode, timeout = _audit_settings()
    machine = int(os.environ.get("GRAIL_MACHINE_RANK", "0") or 0)
    expect = (slice_audit.train_expectation(plan, index, machine) if stage == "train"
              else slice_audit.eval_expectation(plan, index))
    audit = slice_audit.SliceAudit(expect, timeout_s=timeout, mode=mode)
    path = slice_audit.audit_path(plan.run_dir, stage, index, os.environ.get("GRAIL_ATTEMPT", "0") or "0", machine)
    if mode == "off":
        import subprocess

        print("[grail] slice audit off (GRAIL_SLICE_AUDIT=off)", flush=True)
        return subprocess.call(argv, cwd=cwd)
    return run_watched(argv, cwd, audit, path)


def _audit_slices(argv: list[str]) -> int:
    """``entry audit-slices train --run-dir R --index I [--plan-hash H] -- <trainer argv>``: the train
    job's SONIC command under the slice audit; its exit status (1 on a slice mismatch), no marker."""
    parser = argparse.ArgumentParser(prog="python -m grail_cluster.entry audit-slices")
    parser.add_argument("stage", choices=["train"])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--plan-hash")
    if "--" not in argv:
        parser.error("no trainer command: give it after --")
    cut = argv.index("--")
    args, command = parser.parse_args(argv[:cut]), argv[cut + 1:]
    if not command:
        parser.error("no trainer command after --")
    try:
        plan = read_plan(args.run_dir)
        if args.plan_hash and plan.plan_hash != args.plan_hash:
            raise DataError(f"plan.json changed since this job was rendered ({plan.plan_hash[:12]} != {args.plan_hash[:12]})",
                            path=os.path.join(args.run_dir, "plan.json"),
                            fix="re-render and resubmit the run (`grail-cluster run ...`) instead of editing its plan")
        if not 0 <= args.index < plan.stage(args.stage).size:
            raise GrailError(f"index {args.index} outside 0..{plan.stage(args.stage).size - 1} of stage {args.stage}")
        code = _run_child(command, os.getcwd(), plan, args.stage, args.index)
    except GrailError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code or EXIT_USAGE
    return code if code >= 0 else 128 - code


def _eval(plan: RunPlan, index: int) -> int:
    """One SONIC metrics shard; done when its metrics_eval.json covers exactly the shard's motions."""
    import json

    from grail_cluster.stages import eval as eval_launcher
    from grail_cluster.sonic.commands import shell_join

    c, shard = plan.eval_index(index)
    checkpoint, step = eval_launcher.resolve_checkpoint(plan, c)
    argv = eval_launcher.sonic_argv(plan, index, checkpoint, step)
    out_dir = eval_launcher.shard_dir(plan, step, shard.shard, checkpoint)
    metrics = os.path.join(out_dir, "metrics_eval.json")
    if os.path.exists(metrics):  # a stale shard from an earlier attempt must not pass for this one
        os.remove(metrics)
    print("[grail] " + shell_join(argv), flush=True)
    code = _run_child(argv, plan.config["sonic"]["root"], plan, "eval", index)
    if code != 0:
        print(f"[grail] SONIC eval exited with {code}", file=sys.stderr)
        return code if code > 0 else 128 - code
    try:
        with open(metrics) as fh:
            keys = json.load(fh)["eval/all_metrics_dict"]["motion_keys"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"SONIC eval exited 0 but its metrics_eval.json is missing or unreadable ({exc})",
                        path=metrics, fix="check the eval log; the shard must write metrics_eval.json") from None
    if sorted(keys) != sorted(shard.motion_keys):
        raise DataError(f"metrics_eval.json covers {len(keys)} motions, the shard has {len(shard.motion_keys)}",
                        path=metrics, fix="the evaluator sliced the library differently from the plan; check "
                                          "the shard overrides in the log")
    write_marker(plan.run_dir, "eval", index, plan.plan_hash,
                 _digests([metrics]))
    print(f"[grail] eval shard {shard.shard} of checkpoint step {step}: {len(keys)} motions -> {out_dir}")
    return 0


def _require_step(checkpoint: str, step: int | None) -> None:
    if step is None:
        raise DataError("the checkpoint's training step is unknown, and exported/merged libraries are keyed by step",
                        path=checkpoint, fix="evaluate model_step_NNNNNN.pt files (or copy last.pt to that name)")


def _select(plan: RunPlan, index: int) -> int:
    """Rank the run's own checkpoints (TensorBoard events / eval metrics of its experiment dir); in a
    sweep, every point's together."""
    from grail_cluster.tools.data.io import write_json
    from grail_cluster.tools.data.select_top import select_across, select_top

    k = plan.eval["num_checkpoints"]
    opts = {"k": k, "hoi": plan.pipeline.get("tiebreak") == "obj_pos_error",
            "min_sr": float(plan.config["select"].get("min_sr") or 0.0)}
    if plan.is_sweep:
        dirs = [p["experiment_dir"] for p in plan.train["points"]]
        result = select_across(experiment_dirs=dirs, group=plan.run_id, **opts)
        point_of = {os.path.abspath(d): n for n, d in enumerate(dirs)}
        for entry in result["top"]:
            entry["point"] = point_of.get(entry["experiment_dir"])
    else:
        result = select_top(experiment_dir=plan.paths["experiment_dir"], **opts)
    if len(result["top"]) < k:
        raise DataError(f"only {len(result['top'])} checkpoint(s) qualify; the plan evaluates {k}",
                        path=plan.paths["experiment_dir"], fix="lower select.k or select.min_sr, and re-plan")
    path = plan.paths["selection"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, result)
    write_marker(plan.run_dir, "select", index, plan.plan_hash,
                 _digests([path]))
    print(f"[grail] selected {k} checkpoint(s): {[(t.get('point', ''), t['eval_step']) for t in result['top']]}")
    return 0


def _export(plan: RunPlan, index: int) -> int:
    """Export the successful rollouts of eval index ``index`` (GRAIL layout exported/step_S/shard_i)."""
    from grail_cluster.stages.eval import export_dir, resolve_checkpoint, shard_dir
    from grail_cluster.tools.data.export import export_shard

    c, shard = plan.eval_index(index)
    checkpoint, step = resolve_checkpoint(plan, c)
    _require_step(checkpoint, step)
    out = os.path.join(export_dir(plan, checkpoint), f"step_{step:06d}", f"shard_{shard.shard}")
    ex = plan.config["export"]
    manifest = export_shard(shard_dir(plan, step, shard.shard, checkpoint), plan.library["root"], out,
                            obj_pos_threshold=ex.get("obj_pos_threshold"), min_progress=float(ex["min_progress"]),
                            hand_actions=(plan.pipeline.get("needs") or {}).get("hand_actions", "no") != "no",
                            checkpoint=checkpoint, step=step)
    path = os.path.join(out, "export_manifest.json")
    write_marker(plan.run_dir, "export", index, plan.plan_hash,
                 _digests([path]))
    print(f"[grail] exported {manifest['exported_count']}/{manifest['total_motions_evaluated']} to {out}")
    return 0


def _merge(plan: RunPlan, index: int) -> int:
    """Merge every export shard of checkpoint rank ``index`` into exported/step_S/merged."""
    from grail_cluster.core.provenance import read_provenance
    from grail_cluster.stages.eval import resolve_checkpoint, results_dir
    from grail_cluster.tools.data.merge import merge_step

    checkpoint, step = resolve_checkpoint(plan, index)
    _require_step(checkpoint, step)
    report = merge_step(results_dir(plan, checkpoint), step, num_shards=plan.eval["num_shards"],
                        source_data=plan.library["root"], provenance=read_provenance(plan.run_dir))
    if not report["sound"]:
        raise DataError(f"the merge of step {step} is not sound: {'; '.join(report.get('problems', []))[:300]}",
                        path=report.get("output"), fix="it was written there, not to merged/; read the findings in its "
                                                         "export_manifest.json (or `grail-cluster merge --json`), then "
                                                         "resubmit the export shards it names")
    manifest = os.path.join(report["output"], "export_manifest.json")
    write_marker(plan.run_dir, "merge", index, plan.plan_hash,
                 _digests([manifest]))
    print(f"[grail] merged step {step}: {report.get('exported_count')} motions in {report['output']}")
    return 0


def _render(plan: RunPlan, index: int) -> int:
    """Replay videos of eval index ``index``'s successful motions into <shard_dir>/vis/<key>.mp4 (CPU, MuJoCo)."""
    from grail_cluster.stages.eval import resolve_checkpoint, shard_dir
    from grail_cluster.tools.replay.render import DEFAULT_CAMERA_OFFSET, render_stage

    c, shard = plan.eval_index(index)
    checkpoint, step = resolve_checkpoint(plan, c)
    sdir = shard_dir(plan, step, shard.shard, checkpoint)
    # One render worker per CPU the job was given, not per CPU of the node it shares with other jobs.
    summary = render_stage(sdir, usd_dir=plan.library.get("usd_dir"), source_data=plan.library["root"],
                           resolution=str(plan.config["render"]["resolution"]),
                           workers=plan.stage("render").resources.cpus, lod_mm=plan.config["render"].get("lod_mm") or 0.0,
                           camera_offset=tuple(plan.config["render"].get("camera_offset") or DEFAULT_CAMERA_OFFSET))
    if summary["failed"]:
        first = summary["failed"][0]
        raise DataError(f"{len(summary['failed'])} of {summary['selected']} motion(s) failed to render; first: "
                        f"{first['key']}: {first['why']}"[:600], path=summary["output_dir"],
                        fix="fix the named trajectories/USDs, then resubmit the render stage (finished videos are kept)")
    outputs = _digests(sorted(os.path.join(summary["output_dir"], f"{k}.mp4")
                              for k in [x["key"] for x in summary["videos"]] + summary["skipped_keys"]))
    write_marker(plan.run_dir, "render", index, plan.plan_hash, outputs)
    print(f"[grail] rendered {summary['rendered']} motion(s) ({summary['skipped']} kept) of "
          f"{summary['motions_in_input']} into {summary['output_dir']} in {summary['seconds']:.1f} s")
    return 0


def _web(plan: RunPlan, index: int) -> int:
    """The viewer of every selected checkpoint's merged library: <web_dir>/step_<S:06d>/ + an index page."""
    from grail_cluster.stages.eval import export_dir, resolve_checkpoint
    from grail_cluster.tools.web.generate import generate_run_site

    libraries = []
    for rank in range(plan.eval["num_checkpoints"]):
        checkpoint, step = resolve_checkpoint(plan, rank)
        _require_step(checkpoint, step)
        merged = os.path.join(export_dir(plan, checkpoint), f"step_{step:06d}", "merged")
        if not os.path.isdir(os.path.join(merged, "robot")):
            raise DataError("merged library not found", path=merged, fix="run (or resubmit) the merge stage first")
        # A sweep's winners may share a step; their sites are named by point too.
        name = f"{os.path.basename(os.path.dirname(checkpoint))}_step_{step:06d}" if plan.is_sweep else None
        libraries.append((step, merged, name) if name else (step, merged))
    title = (plan.config.get("web") or {}).get("title") or plan.run_id
    result = generate_run_site(plan.paths["web_dir"], libraries, title=title)
    manifests = [result["manifest"]] + [os.path.join(result["output"], s["path"], "manifest.json") for s in result["sites"]]
    write_marker(plan.run_dir, "web", index, plan.plan_hash,
                 _digests(manifests))
    print(f"[grail] web viewer of {len(libraries)} checkpoint(s) in {result['output']} "
          f"(view: grail-cluster serve {result['output']})")
    return 0


STAGES = {"train": _train, "select": _select, "eval": _eval, "export": _export, "merge": _merge, "web": _web,
          "render": _render}
LATER: dict[str, str] = {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["audit-slices"]:
        return _audit_slices(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m grail_cluster.entry", description=__doc__)
    parser.add_argument("stage", choices=sorted(set(STAGES) | set(LATER)))
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--plan-hash", help="refuse to run if plan.json no longer has this hash")
    parser.add_argument("--force", action="store_true", help="run even if this index's marker says it is done")
    args = parser.parse_args(argv)
    try:
        plan = read_plan(args.run_dir)
        if args.plan_hash and plan.plan_hash != args.plan_hash:
            raise DataError(f"plan.json changed since this job was rendered ({plan.plan_hash[:12]} != {args.plan_hash[:12]})",
                            path=os.path.join(args.run_dir, "plan.json"),
                            fix="re-render and resubmit the run (`grail-cluster run ...`) instead of editing its plan")
        if args.stage not in plan.stage_names:
            raise GrailError(f"stage {args.stage} is not part of run {plan.run_id}",
                             fix=f"stages of this run: {', '.join(plan.stage_names)}")
        size = plan.stage(args.stage).size
        if not 0 <= args.index < size:
            raise GrailError(f"index {args.index} outside 0..{size - 1} of stage {args.stage}")
        if not args.force and validate_marker(plan.run_dir, args.stage, args.index, plan.plan_hash):
            # A requeued or resubmitted job whose work is already done must not redo (or clobber) it.
            print(f"[grail] {args.stage} {args.index} is already done (valid marker); nothing to do (--force reruns)")
            return 0
        if plan.config.get("rehearsal", {}).get("enabled"):
            from grail_cluster.stages import rehearsal

            return rehearsal.run(plan, args.stage, args.index)
        if args.stage in LATER:
            raise GrailError(f"the {args.stage} stage's in-job tool (`grail-cluster {LATER[args.stage]}`) is not part "
                             "of this grail-cluster version", fix="upgrade grail-cluster")
        return STAGES[args.stage](plan, args.index)
    except GrailError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code or EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
