"""The in-job entry point: ``python -m grail_cluster.entry <stage> --run-dir R --index I``.

A job never re-derives its work from scheduler arithmetic: it reads its slice from plan.json,
refuses to run against a plan that changed since the job was rendered, does its work, and writes
the stage's success marker.
"""

from __future__ import annotations

import argparse
import sys

from grail_cluster.core.errors import EXIT_USAGE, GrailError
from grail_cluster.core.markers import validate_marker
from grail_cluster.core.plan import read_plan
from grail_cluster.stages import registry, rehearsal
from grail_cluster.stages.child import audit_slices


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["audit-slices"]:
        return audit_slices(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m grail_cluster.entry", description=__doc__)
    parser.add_argument("stage", choices=sorted(registry.names()))
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--plan-hash", help="refuse to run if plan.json no longer has this hash")
    parser.add_argument("--force", action="store_true", help="run even if this index's marker says it is done")
    args = parser.parse_args(argv)
    try:
        plan = read_plan(args.run_dir, rendered_hash=args.plan_hash)
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
        stage = registry.get(args.stage)
        if plan.settings.rehearsal.enabled:
            return rehearsal.run(plan, args.stage, args.index, stage.rehearse)
        return stage.run(plan, args.index)
    except GrailError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code or EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
