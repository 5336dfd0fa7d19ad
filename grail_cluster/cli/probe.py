"""``grail-cluster doctor --cluster <overrides>``: ask a compute node what only it can tell.

A probe job of a minute or two goes to the target partition through the same template and
``sbatch`` path as the stages (cluster=local: the local job template, run here). On the node it
checks that job.python imports grail-cluster, that the GPUs it sees match the request, that the
library is readable and the SONIC root and run root are writable, that SONIC's entry scripts and
(``trainer=sonic``) Isaac Lab are there, and that W&B credentials reach the job (never printed).

The node side is this file run as a script by job.python, which may be an interpreter *without*
grail-cluster (that is one of the things to find out), so the module imports only the standard
library at the top and is copied into the probe dir, which the node must see anyway.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grail_cluster.core.settings import Settings

PROBE_DEFAULTS = {"wait": 300, "time": 2, "gpus": None}


# ----------------------------------------------------------------------------- on the node


def _finding(check: str, severity: str, finding: str, fix: str = "") -> dict:
    return {"check": check, "severity": severity, "finding": finding, "fix": fix}


def _gpus_seen() -> tuple[int | None, str]:
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        value = os.environ.get(var)
        if value is not None and value.strip() not in ("", "NoDevFiles"):
            return len([v for v in value.split(",") if v.strip()]), f"{var}={value}"
    if os.environ.get("SLURM_GPUS_ON_NODE"):
        return int(os.environ["SLURM_GPUS_ON_NODE"]), f"SLURM_GPUS_ON_NODE={os.environ['SLURM_GPUS_ON_NODE']}"
    return None, "no CUDA_VISIBLE_DEVICES / SLURM_JOB_GPUS"


def _check_gpus(want: int) -> list[dict]:
    seen, how = _gpus_seen()
    out = []
    if want and seen is None:
        out.append(_finding("gpus", "error", f"requested {want} GPU(s) but the job sees none ({how})",
                            "check cluster.gpu_directive (gpus-per-node or gres) and the partition's GRES"))
    elif seen is not None and seen != want:
        sev = "error" if want else "info"
        out.append(_finding("gpus", sev, f"requested {want} GPU(s), the job sees {seen} ({how})",
                            "check cluster.gpu_directive and the partition's GRES" if want else ""))
    else:
        out.append(_finding("gpus", "ok", f"requested {want} GPU(s), the job sees {seen or 0} ({how})"))
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        devices = [ln for ln in proc.stdout.splitlines() if ln.startswith("GPU ")]
        sev = "error" if want and len(devices) < want else "ok"
        out.append(_finding("gpu devices", sev, f"nvidia-smi lists {len(devices)} GPU(s) on the node",
                            "this node has fewer GPUs than the request; check the partition" if sev == "error" else ""))
    except (OSError, subprocess.TimeoutExpired):
        if want:
            out.append(_finding("gpu devices", "warn", "no nvidia-smi on the node: the GPU devices themselves "
                                "were not checked (only what the scheduler hands out)"))
    return out


def _check_interpreter(want_version: str) -> list[dict]:
    try:
        import grail_cluster  # noqa: F401 - the point: can job.python import it?
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        return [_finding("job.python", "error", f"{sys.executable} cannot import grail_cluster on "
                         f"{socket.gethostname()}: {type(exc).__name__}: {exc}",
                         "job.python=/path/to/python-with-grail-cluster (on a file system the nodes see)")]
    version = getattr(grail_cluster, "__version__", "?")
    if version != want_version:
        return [_finding("job.python", "warn", f"{sys.executable} imports grail-cluster {version}, the submitter "
                         f"runs {want_version}", "install the same grail-cluster version in job.python's environment")]
    return [_finding("job.python", "ok", f"{sys.executable} imports grail-cluster {version}")]


def _check_path(key: str, path: str, mode: str) -> dict:
    p = Path(path)
    if not p.exists():
        return _finding(key, "error", f"{path} is not visible on {socket.gethostname()}",
                        f"put {key} on a file system the compute nodes mount, or fix the path")
    if mode == "read":
        try:
            if p.is_dir():
                entries = sorted(os.listdir(p))[:1]
                first = p / entries[0] if entries else None
                if first is not None and first.is_dir():
                    inner = sorted(os.listdir(first))[:1]
                    first = first / inner[0] if inner else None
                if first is not None and first.is_file():
                    with open(first, "rb") as fh:
                        fh.read(1)
            else:
                with open(p, "rb") as fh:
                    fh.read(1)
        except OSError as exc:
            return _finding(key, "error", f"{path} is not readable from the job: {exc.strerror}",
                            "give the job's user read access")
        return _finding(key, "ok", f"{path} readable")
    try:
        fd, tmp = tempfile.mkstemp(dir=p, prefix=".grail-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return _finding(key, "error", f"{path} is not writable from the job: {exc.strerror}",
                        "give the job's user write access, or choose another directory")
    return _finding(key, "ok", f"{path} writable")


def _netrc_has(host: str) -> bool:
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        words = path.read_text().split()
    except OSError:
        return False
    return any(words[i] == "machine" and words[i + 1] == host for i in range(len(words) - 1))


def _check_wandb(req: dict) -> dict:
    mode = (os.environ.get("WANDB_MODE") or req.get("wandb_mode") or "online").lower()
    host = (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").split("//")[-1].split("/")[0].split(":")[0]
    if os.environ.get("WANDB_API_KEY"):
        return _finding("wandb", "ok", "WANDB_API_KEY reaches the job (value not shown)")
    if _netrc_has(host):
        return _finding("wandb", "ok", f"a netrc entry for {host} reaches the job")
    if mode in ("offline", "disabled", "dryrun") or not req.get("wandb_needed"):
        return _finding("wandb", "info", f"no W&B credentials in the job (W&B mode {mode}: not needed)")
    return _finding("wandb", "error", f"no W&B credentials in the job (no WANDB_API_KEY, no netrc entry for {host}) "
                    f"and W&B mode is {mode}: SONIC's wandb.init fails",
                    "`wandb login` on a home the nodes share, +job.env.WANDB_API_KEY via your site's secret "
                    "mechanism, or sonic.wandb_mode=offline")


def _check_sonic(req: dict) -> list[dict]:
    out = []
    root = Path(req["sonic_root"])
    for script in req.get("sonic_scripts", []):
        path = root / script
        out.append(_finding("sonic scripts", "ok" if path.is_file() else "error",
                            f"{path} {'exists' if path.is_file() else 'is missing on the node'}",
                            "" if path.is_file() else "set sonic.root to the imports/SONIC checkout the nodes see"))
    if req.get("isaaclab"):
        import shlex

        # After sonic.setup (e.g. `conda activate sonic`), as the train and eval jobs run it.
        setup = "; ".join(req.get("sonic_setup") or [])
        code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('isaaclab') else 3)"
        line = (setup + "; " if setup else "") + f"{shlex.quote(req['sonic_python'])} -c {shlex.quote(code)}"
        try:
            proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=120)
            ok = proc.returncode == 0
            why = "" if proc.returncode in (0, 3) else ": " + (proc.stderr.strip().splitlines() or
                                                              [f"exit {proc.returncode}"])[-1]
        except subprocess.TimeoutExpired:
            ok, why = False, ": timed out after 120 s"
        out.append(_finding("isaac lab", "ok" if ok else "error",
                            f"sonic.python ({req['sonic_python']}) {'finds' if ok else 'cannot find'} isaaclab{why}",
                            "" if ok else "sonic.python=/path/to/sonic-env/bin/python, or sonic.setup=['conda activate sonic']"))
    return out


def node_checks(req: dict) -> dict:
    findings = _check_interpreter(req["version"])
    findings += _check_gpus(int(req["gpus"]))
    for key, (path, mode) in req["paths"].items():
        findings.append(_check_path(key, path, mode))
    if req.get("sonic_root"):
        findings += _check_sonic(req)
    findings.append(_check_wandb(req))
    return {"node": socket.gethostname(), "python": sys.executable, "findings": findings}


def _node_main(argv: list[str]) -> int:
    request, result = argv
    with open(request) as fh:
        req = json.load(fh)
    data = node_checks(req)
    tmp = result + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, result)
    return 0


# ----------------------------------------------------------------------------- on the submitting machine


def split_args(first: str | None, overrides: list[str]) -> tuple[list[str], dict]:
    """doctor's positional library slot may hold the first override (`doctor --cluster pipeline=x ...`)."""
    items = ([first] if first else []) + list(overrides)
    cfg_over: list[str] = []
    opts = dict(PROBE_DEFAULTS)
    from grail_cluster.core.errors import ConfigError

    for item in items:
        if "=" not in item:
            cfg_over.append(f"data.motion_lib={item}")
            continue
        key, _, value = item.partition("=")
        if key.startswith("probe."):
            name = key[len("probe."):]
            if name not in PROBE_DEFAULTS or not value.isdigit():
                raise ConfigError(f"{key}={value!r} is not a probe setting",
                                  fix="probe.wait=SECONDS (default 300), probe.time=MINUTES (2), probe.gpus=N")
            opts[name] = int(value)
            continue
        cfg_over.append(item)
    return cfg_over, opts


def _request(cs: Settings, gpus: int) -> dict:
    from grail_cluster import __version__
    from grail_cluster.sonic.commands import resolve_script
    from grail_cluster.sonic.reference import reference_root

    reference = os.path.abspath(cs.sonic.root) == os.path.abspath(reference_root())
    rehearsal = bool(cs.rehearsal.enabled)
    paths = {"data.motion_lib": (os.path.abspath(cs.data.motion_lib), "read")}
    for key in ("bps_dir", "object_usd_dir", "flat_motion_dir"):
        if getattr(cs.data, key):
            paths[f"data.{key}"] = (os.path.abspath(getattr(cs.data, key)), "read")
    run_root = os.path.abspath(os.path.expanduser(cs.run.root))
    paths["run.root"] = (run_root, "write")
    req = {"version": __version__, "gpus": gpus, "paths": paths, "wandb_mode": cs.sonic.wandb_mode,
           "wandb_needed": not reference and not rehearsal}
    if not rehearsal:
        root = cs.sonic.root
        paths["sonic.root"] = (os.path.abspath(root), "read" if reference else "write")
        req.update(sonic_root=os.path.abspath(root), sonic_python=cs.sonic.python,
                   sonic_setup=list(cs.sonic.setup or []), isaaclab=not reference,
                   sonic_scripts=[resolve_script(root, cs.sonic.train_script, "train_agent_trl.py"),
                                  resolve_script(root, cs.sonic.eval_script, "eval_agent_trl.py")])
    return req


def _default_gpus(cs: Settings) -> int:
    if cs.train.enabled and not cs.select.checkpoints and cs.train.device != "cpu":
        return int(cs.train.gpus_per_node)
    return int(cs.resources.eval.gpus or 0)


def _spec(cs: Settings, probe_dir: Path, gpus: int, minutes: int, python: str):
    from grail_cluster.core.jobspec import JobSpec
    from grail_cluster.core.plan import Resources
    from grail_cluster.sonic.commands import shell_join

    env = {k: str(v) for k, v in (cs.job.env or {}).items()}
    env.update({k: str(v) for k, v in (cs.sonic.env or {}).items()})
    if cs.sonic.wandb_mode:
        env["WANDB_MODE"] = str(cs.sonic.wandb_mode)
    return JobSpec(run_id="grail-probe", stage="probe", size=1, array=False,
                   resources=Resources(1, gpus, 1, 1.0, minutes), depends_on=[], workdir=str(probe_dir),
                   run_dir=str(probe_dir), plan_hash="probe-" + probe_dir.name, setup=list(cs.job.setup or []),
                   env=dict(sorted(env.items())), comment="grail-cluster doctor --cluster: what a compute node sees",
                   body=[shell_join([python, str(probe_dir / "probe.py"), str(probe_dir / "request.json"),
                                     str(probe_dir / "result.json")])],
                   python="")  # no interpreter guard: reporting on the interpreter is the probe's job


def _log_tail(probe_dir: Path, lines: int = 6) -> str:
    text = []
    for path in sorted(probe_dir.glob("logs/**/*.err")):
        try:
            text += [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            pass
    return " | ".join(text[-lines:])


def _run_local(cs: Settings, script: Path, result: Path, gpus: int, wait: int) -> dict:
    ids = [str(g) for g in (cs.cluster.gpus or [])]
    env = {**os.environ, "GRAIL_INDEX": "0", "GRAIL_ATTEMPT": "0", "CUDA_VISIBLE_DEVICES": ",".join(ids[:gpus])}
    try:
        proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=wait,
                              stdin=subprocess.DEVNULL)
        state = "COMPLETED" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        state = f"TIMEOUT after {wait} s"
    return {"job_id": None, "state": state}


def _run_slurm(script: Path, result: Path, wait: int) -> dict:
    from grail_cluster.backends.slurm import SlurmBackend

    backend = SlurmBackend()
    job_id = backend.sbatch(script, ["--job-name=grail-probe", "--export=ALL,GRAIL_INDEX_OFFSET=0,GRAIL_ATTEMPT=0"])
    # The backend knows a job by its id and name (a reused id is another job).
    job = type("Job", (), {"job_id": job_id, "name": "grail-probe", "submitted_at": time.time(), "array_spec": None,
                           "indices": [0], "index_offset": 0})()
    deadline = time.monotonic() + wait
    state = "PENDING"
    while time.monotonic() < deadline:
        time.sleep(1.0)
        live = backend.live_states([job])
        if live:
            state = next(iter(live.values())).sched_state
            continue
        final = backend.final_states([job])
        if final:
            info = next(iter(final.values()))
            state = info.sched_state + (f" (exit {info.exit_code})" if info.exit_code not in (None, "0:0") else "")
            if info.state not in ("pending", "running"):
                return {"job_id": job_id, "state": state}
        elif result.exists():
            return {"job_id": job_id, "state": "COMPLETED"}
    backend.cancel([job_id])
    return {"job_id": job_id, "state": f"{state} after {wait} s: cancelled", "unfinished": True}


def run_probe(items_first: str | None, overrides: list[str]) -> dict:
    from grail_cluster.core import config
    from grail_cluster.core.errors import ConfigError
    from grail_cluster.core.settings import settings
    from grail_cluster.runs.job_files import template_env

    cfg_over, opts = split_args(items_first, overrides)
    cs = settings(config.load(cfg_over))
    backend = cs.cluster.backend
    if backend not in ("slurm", "local"):
        raise ConfigError(f"doctor --cluster probes cluster=slurm or cluster=local, not {backend}",
                          fix="use cluster=slurm or cluster=local (Kubernetes pods: `kubectl run` with the image)")
    gpus = opts["gpus"] if opts["gpus"] is not None else _default_gpus(cs)
    run_root = Path(cs.run.root).expanduser().absolute()
    probe_dir = run_root / ".probe" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    probe_dir.mkdir(parents=True)
    request = _request(cs, gpus)
    (probe_dir / "request.json").write_text(json.dumps(request, indent=1))
    (probe_dir / "probe.py").write_text(Path(__file__).read_text())
    spec = _spec(cs, probe_dir, gpus, opts["time"], str(cs.job.python))
    env = template_env()
    script = probe_dir / "probe.sh"
    result = probe_dir / "result.json"
    if backend == "slurm":
        from grail_cluster.backends.slurm import render_job

        (probe_dir / "logs" / "probe").mkdir(parents=True)
        script.write_text(render_job(cs.cluster, str(probe_dir / "logs" / "probe"), spec, env))
        outcome = _run_slurm(script, result, opts["wait"])
    else:
        script.write_text(env.get_template("local/job.sh.j2").render(spec=spec, r=spec.resources, master_port=0))
        outcome = _run_local(cs, script, result, gpus, opts["wait"])
    report = {"backend": backend, "partition": getattr(cs.cluster, "partition", None),  # cluster=local has none
              "probe_dir": str(probe_dir), "job_python": cs.job.python, "gpus_requested": gpus, **outcome}
    if result.exists():
        report.update(json.loads(result.read_text()))
    else:
        tail = _log_tail(probe_dir)
        report["findings"] = [_finding(
            "probe job", "error", f"the probe job ended {outcome['state']} without a result"
            + (f": {tail}" if tail else ""),
            "job.python=/path/to/python (it must exist on the node)" if "No such file" in tail or "not found" in tail
            else "read the probe's logs in " + str(probe_dir / "logs"))]
    report["errors"] = sum(1 for f in report["findings"] if f["severity"] == "error")
    return report


def cmd_probe(args) -> int:
    """The `doctor --cluster` branch of the CLI: one table of findings (or --json); exit 1 on any error."""
    from rich.markup import escape
    from rich.table import Table

    from grail_cluster.cli.common import out, print_json
    from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS

    report = run_probe(getattr(args, "motion_lib", None), list(getattr(args, "overrides", []) or []))
    if args.json:
        print_json(report)
    else:
        where = f"cluster={report['backend']}" + (f", partition {report['partition']}" if report.get("partition") else "")
        job = f"job {report['job_id']}" if report.get("job_id") else "local job"
        title = f"probe ({where}, {job} on {report.get('node', '?')}: {report['state']})"
        table = Table(title=escape(title))
        for col in ("check", "severity", "finding", "fix"):
            table.add_column(col, overflow="fold")
        colour = {"error": "red", "warn": "yellow", "info": "cyan", "ok": "green"}
        for f in report["findings"]:
            table.add_row(escape(f["check"]), f"[{colour.get(f['severity'], 'white')}]{f['severity']}[/]",
                          escape(f["finding"]), escape(f["fix"]))
        out.print(table)
        n = report["errors"]
        out.print(f"{n} error(s); probe files in {escape(report['probe_dir'])}" if n else
                  f"no errors; probe files in {escape(report['probe_dir'])}")
    return EXIT_PROBLEMS if report["errors"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(_node_main(sys.argv[1:]))
