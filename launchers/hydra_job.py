"""The job side of the Hydra launcher plugin (``hydra/launcher=grail_local|grail_slurm``).

Two commands, both written by the launcher (``grail_cluster.launchers.submission``)::

    python -m grail_cluster.launchers.hydra_job run --payload P --sha256 HEX --index I \\
        --result-dir R --job-id ID [--index-offset K] [--path DIR]
    python -m grail_cluster.launchers.hydra_job drive --payload P --sha256 HEX --count N \\
        --max-parallel K --result-dir R --log-dir L [--python PY] [--path DIR]

``run`` is one Hydra job: it loads the payload (the Hydra context, task function, sweep config
and ``Singleton`` state the launcher cloudpickled for this submission), but only after checking
its SHA-256 against ``--sha256`` (:mod:`grail_cluster.launchers.payloads`); a missing or changed
payload is refused (exit 3) without being unpickled. It then does what Hydra's basic and
submitit launchers do in a job (``Singleton.set_state``, ``setup_globals``, ``configure_log``,
``load_sweep_config``, ``run_job``) and writes ``<result-dir>/<index>.json`` (temporary file + rename): JSON, never a
pickle. ``drive`` is the local backend's slot queue: one ``run`` process per index, at most
``--max-parallel`` at once; it writes the result of a job process that died without one.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
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
    read_result,
    result_file,
    write_result,
)

EXIT_FAILED = 1
EXIT_REFUSED = 3


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
    index = args.index + args.index_offset
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
    return 0


# ----------------------------------------------------------------------------- drive: the local slot queue


def drive(args: argparse.Namespace) -> int:
    log_dir = Path(args.log_dir)
    running: dict[int, subprocess.Popen] = {}
    todo = list(range(args.count))
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in running.values():
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while (todo and not stopping) or running:
        while todo and not stopping and len(running) < args.max_parallel:
            index = todo.pop(0)
            running[index] = _start_job(args, index, log_dir)
        for index, proc in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[index]
            path = result_file(args.result_dir, index)
            if read_result(path) is None:
                # Killed, segfault, OOM: the job could not say why, so the driver says what it saw.
                write_result(path, {
                    "index": index, "job_id": f"{os.getpid()}_{index}",
                    "status": "failed", "ended": time.time(),
                    "error": {"type": "JobProcessDied", "traceback": "",
                              "message": f"the job process exited with code {code} without writing a result; "
                                         f"see {log_dir / f'{index}.err'}"}})
        time.sleep(0.05)
    return 0


def _start_job(args: argparse.Namespace, index: int, log_dir: Path) -> subprocess.Popen:
    argv = [args.python, "-m", "grail_cluster.launchers.hydra_job", "run", "--payload", args.payload,
            "--sha256", args.sha256, "--result-dir", args.result_dir, "--index", str(index),
            "--job-id", f"{os.getpid()}_{index}"]
    for extra in args.path:
        argv += ["--path", extra]
    with open(log_dir / f"{index}.out", "ab") as out, open(log_dir / f"{index}.err", "ab") as err:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m grail_cluster.launchers.hydra_job",
                                     description="grail-cluster's Hydra launcher: the job side (commands "
                                                 "written by the launcher)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "drive"):
        p = sub.add_parser(name)
        p.add_argument("--payload", required=True)
        p.add_argument("--sha256", required=True)
        p.add_argument("--result-dir", required=True)
        p.add_argument("--path", action="append", default=[],
                       help="prepended to sys.path (the app's directory)")
    run_p = sub.choices["run"]
    run_p.add_argument("--index", type=int, required=True)
    run_p.add_argument("--index-offset", type=int, default=0)
    run_p.add_argument("--job-id", required=True)
    drive_p = sub.choices["drive"]
    drive_p.add_argument("--count", type=int, required=True)
    drive_p.add_argument("--max-parallel", type=int, required=True)
    drive_p.add_argument("--log-dir", required=True)
    drive_p.add_argument("--python", default=sys.executable)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for extra in reversed(args.path):
        if extra not in sys.path:
            sys.path.insert(0, extra)
    return run(args) if args.command == "run" else drive(args)


if __name__ == "__main__":
    sys.exit(main())
