"""SLURM rendering: one sbatch script per stage plus the DAG as a plain submit script.

Submission (issue: submit/ledger) sends these exact files; dependencies are command-line flags
(``--dependency=afterok:<id>`` / ``aftercorr:<id>``) because job ids exist only at submit time.
"""

from __future__ import annotations

import math

import jinja2

from ..jobspec import JobSpec
from ..plan import RunPlan


def slurm_time(minutes: int) -> str:
    days, rem = divmod(int(minutes), 1440)
    hours, mins = divmod(rem, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


def slurm_mem(gb: float) -> str:
    return f"{math.ceil(gb)}G" if gb >= 1 else f"{math.ceil(gb * 1024)}M"


def render_script(plan: RunPlan, spec: JobSpec, env: jinja2.Environment) -> str:
    cluster = plan.config["cluster"]
    return env.get_template("slurm/job.sh.j2").render(
        spec=spec, r=spec.resources, cluster=cluster,
        parallelism=int(cluster.get("array_parallelism") or spec.size),
        mem=slurm_mem(spec.resources.mem_gb), time=slurm_time(spec.resources.time_min),
        log_dir=f"{plan.paths['logs_dir']}/{spec.stage}",
    )


def render(plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
    files = {f"{spec.stage}.sh": render_script(plan, spec, env) for spec in specs}
    files["submit.sh"] = env.get_template("slurm/submit.sh.j2").render(
        plan=plan, specs=specs, log_root=plan.paths["logs_dir"])
    return files
