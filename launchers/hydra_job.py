"""The job side of the Hydra launcher plugin (``hydra/launcher=grail_local|grail_slurm``)::

    python -m grail_cluster.launchers.hydra_job run --payload P --sha256 HEX --index I \\
        --result-dir R --job-id ID [--run-dir D] [--path DIR]

One Hydra job, run by the sweep's job script (``specs/<backend>/hydra.sh``, rendered by the backend's
own template; ``I`` is the job's number in the sweep). It loads the payload (the Hydra context, task
function, sweep config and ``Singleton`` state the launcher cloudpickled for this round), but only
after checking its SHA-256 against ``--sha256`` (:mod:`grail_cluster.launchers.payloads`); a missing
or changed payload is refused (exit 3) without being unpickled. It then does what Hydra's basic and
submitit launchers do in a job (``Singleton.set_state``, ``setup_globals``, ``configure_log``,
``load_sweep_config``, ``run_job``) and writes ``<result-dir>/<index>.json`` (temporary file +
rename): JSON, never a pickle. With ``--run-dir``, a completed job then writes its success marker
(``markers/hydra/<index>/``) with its key as the marker's hash, listing the result file.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from grail_cluster.launchers.payloads import (
    PayloadRefused,
    encode_error,
    encode_value,
    load_payload,
    result_file,
    write_result,
)

EXIT_FAILED = 1
EXIT_REFUSED = 3
STAGE = "hydra"  # the one stage of a sweep's plan


def _write_marker(run_dir: Path, index: int, key: str, result: Path) -> None:
    """Written last: the result file it lists is complete; its hash field is the job's key."""
    from grail_cluster.core.markers import file_digest, write_marker

    rel = os.path.relpath(result, run_dir)
    write_marker(run_dir, STAGE, index, key, {rel: {"size": result.stat().st_size, "sha256": file_digest(result)}})


# ----------------------------------------------------------------------------- run: one Hydra job


def _run_hydra_job(payload: dict[str, Any], job: dict[str, Any], job_id: str) -> Any:
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, run_job, setup_globals
    from omegaconf import open_dict

    Singleton.set_state(payload["singleton_state"])
    setup_globals()
    config = payload["config"]
    context = payload["hydra_context"]
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_config = context.config_loader.load_sweep_config(config, list(job["overrides"]))
    with open_dict(sweep_config.hydra.job) as hydra_job:
        hydra_job.id = job_id
        hydra_job.num = job["num"]
    return run_job(hydra_context=context, task_function=payload["task_function"], config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def _job_result(ret: Any) -> dict[str, Any]:
    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    out: dict[str, Any] = {
        "overrides": list(ret.overrides or []), "working_dir": ret.working_dir, "task_name": ret.task_name,
        "cfg": OmegaConf.to_yaml(ret.cfg) if ret.cfg is not None else None,
        "hydra_cfg": OmegaConf.to_yaml(ret.hydra_cfg) if ret.hydra_cfg is not None else None,
    }
    if ret.status == JobStatus.COMPLETED:
        out.update(status="completed", **{"return": encode_value(ret._return_value)})
    else:
        err = ret._return_value
        out.update(status="failed", error=encode_error(err) if isinstance(err, BaseException)
                   else {"type": "unknown", "message": repr(err), "traceback": ""})
    return out


def run(args: argparse.Namespace) -> int:
    index = args.index
    path = result_file(args.result_dir, index)
    base: dict[str, Any] = {"index": index, "job_id": args.job_id,
                            "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                            "payload_sha256": args.sha256}
    try:
        payload = load_payload(Path(args.payload), args.sha256)
    except PayloadRefused as exc:
        print(f"grail hydra job: refused: {exc}", file=sys.stderr, flush=True)
        write_result(path, {**base, "status": "refused", "ended": time.time(),
                            "error": {"type": "PayloadRefused", "message": str(exc), "traceback": ""}})
        return EXIT_REFUSED
    job: dict[str, Any] = {}
    try:
        job = payload["jobs"][index]
        result = _job_result(_run_hydra_job(payload, job, args.job_id))
    except Exception as exc:  # composition errors etc.: run_job itself catches the task's exceptions
        traceback.print_exc()
        result = {"status": "failed", "overrides": list(job.get("overrides", [])), "error": encode_error(exc)}
    write_result(path, {**base, "num": job.get("num"), **result, "ended": time.time()})
    if result["status"] != "completed":
        # A non-zero exit makes SLURM record the job as FAILED (hydra #1928: submitit jobs whose task
        # raised still show COMPLETED).
        print(f"grail hydra job: {result['error']['type']}: {result['error']['message']}", file=sys.stderr)
        return EXIT_FAILED
    if args.run_dir:
        _write_marker(Path(args.run_dir), index, job["key"], path)
    return 0


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m grail_cluster.launchers.hydra_job",
                                     description="grail-cluster's Hydra launcher: the job side (commands "
                                                 "written by the launcher)")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run")
    run_p.add_argument("--payload", required=True)
    run_p.add_argument("--sha256", required=True)
    run_p.add_argument("--result-dir", required=True)
    run_p.add_argument("--path", action="append", default=[], help="prepended to sys.path (the app's directory)")
    run_p.add_argument("--index", type=int, required=True)
    run_p.add_argument("--job-id", required=True)
    run_p.add_argument("--run-dir", help="the sweep's run dir: a completed job writes its success marker there")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for extra in reversed(args.path):
        if extra not in sys.path:
            sys.path.insert(0, extra)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
