"""``grail-cluster``: the command line.

Each command parses its arguments, calls pure planning/rendering code, and prints a rich table for
people or JSON (``--json``) for scripts. Exit codes: 0 ok, 1 problems found (doctor, bad data),
2 bad usage or configuration, 3 the scheduler did not answer (status shows the ledger's last known
states; resubmit/cancel change nothing). User mistakes print one clear message and no traceback.

This module only assembles the parser and runs the chosen command; the commands live in modules by
job (``library``, ``planning``, ``runs``, ``demo``, ``probe``) and share ``common``.
"""

from __future__ import annotations

import argparse
import sys

from grail_cluster import __version__
from grail_cluster.cli import demo
from grail_cluster.cli.common import run_command
from grail_cluster.cli.library import cmd_doctor, cmd_index
from grail_cluster.cli.planning import cmd_plan, cmd_render, cmd_run
from grail_cluster.cli.runs import (
    cmd_cancel,
    cmd_logs,
    cmd_repair_ledger,
    cmd_resubmit,
    cmd_status,
    cmd_watch,
)

OVERRIDES_HELP = (
    "Hydra overrides as SONIC uses them, e.g. pipeline=pnp_table data.motion_lib=/d/pickup_table_ha "
    "data.bps_dir=/d/pickup_table/bps sonic.root=/w/imports/SONIC cluster=slurm eval.num_shards=8 "
    "'++sonic.extra_overrides=[\"++callbacks.model_save.save_frequency=250\"]'. Groups: pipeline={pnp_table, pnp_ground, "
    "advanced_manip_table, advanced_manip_ground, terrain_tracking}, cluster={local, slurm, kubernetes}."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grail-cluster",
        description="Plan, render and submit the GRAIL data lifecycle: train SONIC trackers, select checkpoints, "
                    "evaluate in shards, render, export, merge, publish a web viewer.",
        epilog="Exit codes: 0 ok, 1 problems found, 2 bad usage or configuration, 3 the scheduler did not answer "
               "(status/watch show the last known states; nothing was changed).",
    )
    parser.add_argument("--version", action="version", version=f"grail-cluster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def lib_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("motion_lib", help="library root holding robot/ objects/ meta/ (object_usd/ bps/)")
        p.add_argument("--bps_dir", "--bps-dir", dest="bps_dir", help="BPS dir (default <lib>/bps or the non-_ha sibling's)")
        p.add_argument("--usd_dir", "--usd-dir", dest="usd_dir", help="object USD dir (default <lib>/object_usd or the non-_ha sibling's)")
        p.add_argument("--layout", choices=("auto", "hoi", "terrain"), default="auto")
        p.add_argument("--no-cache", action="store_true", help="re-read every pickle (ignore .grail_index.json)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--allow", action="append", default=[], metavar="CHECK[,CHECK]",
                       help="report these checks as warnings instead of errors, e.g. --allow quat-norm,contact-frames "
                            "(only checks that may be allowed; an unknown name lists them; docs/doctor-checks.md "
                            "says what each one means)")

    p = sub.add_parser("index", help="index a motion library (cached) and list its motions",
                       description="Scan a GRAIL motion library into an index cached in the library "
                                   "(.grail_index.json), keyed by size and mtime of each file.")
    lib_args(p)
    p.add_argument("--all", action="store_true", help="list every motion")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("doctor", help="pre-flight checks of a motion library (exit 1 on errors)",
                       description="The pre-flight checklist: file counts, robot/objects pairing, a USD per key, hand "
                                   "actions and contact labels, BPS basis and embeddings, terrain placeholder. "
                                   "Every problem names the file and the fix.")
    lib_args(p)
    p.add_argument("overrides", nargs="*", metavar="pipeline=NAME",
                   help="check what this pipeline needs (pnp_table, pnp_ground, advanced_manip_table, "
                        "advanced_manip_ground, terrain_tracking); with sonic.root=DIR (and "
                        "train.finetune.checkpoint=FILE|release) also the SONIC checkout")
    p.add_argument("--cluster", action="store_true",
                   help="instead: submit a short probe job with these run overrides (cluster=slurm|local, "
                        "data.motion_lib=..., sonic.root=...; probe.wait=S, probe.gpus=N) and report what a compute "
                        "node sees: interpreter, GPUs, paths, Isaac Lab, W&B credentials; exit 1 on any error")
    p.set_defaults(func=cmd_doctor)

    for name, func, helptext in (
        ("plan", cmd_plan, "compute the run plan (stages, shards, rank slices) into runs/<id>/plan.json"),
        ("render", cmd_render, "write every job script/manifest of the plan for the chosen cluster"),
        ("run", cmd_run, "plan, render and submit; returns once every job is queued (--dry-run: submit nothing)"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext + ". " + OVERRIDES_HELP)
        p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides (key=value, +key=value, ++key=value)")
        p.add_argument("--json", action="store_true", help="machine-readable summary")
        p.add_argument("-m", "--multirun", action="store_true",
                       help="a sweep: expand comma lists / range() / choice() in the overrides (Hydra's -m) into "
                            "training points, one array, one W&B group; select ranks across every point")
        p.add_argument("--sweep-file", "--sweep_file", dest="sweep_file",
                       help="YAML with params: {key: 'a,b'} (as hydra.sweeper.params) and optional overrides: [...]; "
                            "implies -m")
        if name == "render":
            p.add_argument("--out", required=True, help="directory for the rendered files (<out>/<cluster>/...)")
        if name == "run":
            p.add_argument("--dry-run", action="store_true", help="write and print the job files, submit nothing")
            p.add_argument("--detach", action="store_true", help="cluster=local: run in the background and return")
            p.add_argument("--wait", action="store_true", help="if another submitter holds this run, wait for it")
        p.set_defaults(func=func)

    def run_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="run dir (runs/<run_id>) or run id")

    p = sub.add_parser("status", help="shards of every stage by state, with failure signatures",
                       description="Refresh from markers and the scheduler (one squeue, sacct only to settle "
                                   "finished jobs) and show each stage's shards by state. A job the scheduler "
                                   "lost (controller crash: its id vanished or names another job) leaves its "
                                   "shards `lost`, which resubmit repairs. Exit 1 if the run finished with "
                                   "failures; exit 3 if the scheduler did not answer (squeue/sacct failed or "
                                   "took over 15 s): the ledger's last known states are shown, with their time.")
    run_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-failures", type=int, default=20, help="failures listed per stage")
    p.add_argument("--point", help="a sweep: show only these training points (e.g. 2 or 1,3)")
    p.add_argument("--verify", action="store_true", help="re-hash every done shard's outputs against its marker "
                                                         "(default: a stat each, size only)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", help="live progress bars until the run ends",
                       description="Refresh every --interval seconds until the run ends; while the scheduler "
                                   "does not answer it keeps polling and says so each round. Exit 1 if the run "
                                   "finished with failures.")
    run_arg(p)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("logs", help="a shard's logs (per attempt), or the tails of every failed shard")
    run_arg(p)
    p.add_argument("--stage", required=True)
    p.add_argument("--index", type=int)
    p.add_argument("--attempt", type=int, help="default: the latest")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--failed", action="store_true", help="tails of every failed shard of the stage")
    p.add_argument("--lines", "-n", type=int, default=40, help="lines of each log (0 = all)")
    p.add_argument("--pod", action="store_true", help="cluster=kubernetes: the shard's pod log through the API "
                                                      "(`kubectl logs`), also used when no log file exists")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel a run's jobs (of --stage and every stage after it)")
    run_arg(p)
    p.add_argument("--stage")
    p.add_argument("--point", help="a sweep: cancel only these training points (e.g. 2 or 1,3), and the stages "
                                   "after training, which wait on them; `resubmit` resumes them alone")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("resubmit", help="re-run failed or missing shards and what depends on them",
                       description="By default every failed, cancelled, timed-out, node-failed, out-of-memory, "
                                   "missing-output or lost shard of every stage, plus the not-done work that depends on it, "
                                   "as new arrays of only those indices with the attempt bumped. Idempotent.")
    run_arg(p)
    p.add_argument("--stage", help="only these stages (comma list), plus what depends on them")
    p.add_argument("--indices", help="only these indices, e.g. 3,7")
    p.add_argument("--point", help="a sweep: only these training points (e.g. 2 or 1,3), resumed from their own "
                                   "last.pt, plus what depends on them")
    p.add_argument("--states", help="comma list, default failed,cancelled,timeout,node-fail,out-of-memory,missing-output,lost,missing")
    p.add_argument("--dry-run", action="store_true", help="show what would be submitted")
    p.add_argument("--wait", action="store_true", help="if another submitter holds this run, wait for it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_resubmit)

    p = sub.add_parser("repair-ledger", help="rebuild a lost or damaged ledger.sqlite from plan.json, the markers "
                                             "and the scheduler's jobs (found by name)",
                       description="Keeps the damaged file aside (ledger.sqlite.corrupt-<time>) and loses nothing "
                                   "that finished: valid markers are done, queued/running jobs are re-attached, "
                                   "the rest is missing-output for `resubmit`. SLURM and local runs.")
    run_arg(p)
    p.add_argument("--force", action="store_true", help="rebuild even a sound ledger (kept aside as .replaced-<time>)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_repair_ledger)

    # The data lifecycle tools (GRAIL-compatible): each module registers its own subcommand.
    from grail_cluster.tools.data import bps, demo_library, export, merge, select_top, summarize
    from grail_cluster.tools.replay import render as render_replay
    from grail_cluster.tools.web import generate as web_generate
    from grail_cluster.tools.web import serve as web_serve

    for tool in (select_top, export, summarize, merge, bps, demo_library, render_replay, web_generate, web_serve):
        tool.register(sub)
    demo.register(sub)
    from grail_cluster.backends.kubernetes import driver as drive

    drive.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after flags (`doctor LIB --json pipeline=x`): argparse's
    # positional `nargs="*"` stops at the first flag, so gather the stragglers here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run_command(args.func, args)


def run() -> None:  # pragma: no cover - console entry
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
