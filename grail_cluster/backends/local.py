"""Local rendering: the same job bodies as bash scripts, plus ``jobs.json`` for the slot queue."""

from __future__ import annotations

import json
from dataclasses import asdict

import jinja2

from ..jobspec import JobSpec
from ..plan import RunPlan


def render(plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
    template = env.get_template("local/job.sh.j2")
    port = int(plan.config["train"].get("master_port") or 29500)
    files = {f"{spec.stage}.sh": template.render(spec=spec, r=spec.resources, master_port=port) for spec in specs}
    jobs = [
        {
            "stage": spec.stage,
            "script": f"{spec.stage}.sh",
            "size": spec.size,
            "depends_on": [asdict(d) for d in spec.depends_on],
            "cpus": spec.resources.cpus,
            "gpus": spec.resources.gpus,
            "mem_gb": spec.resources.mem_gb,
            "time_min": spec.resources.time_min,
        }
        for spec in specs
    ]
    files["jobs.json"] = json.dumps({"run_id": plan.run_id, "plan_hash": plan.plan_hash, "jobs": jobs}, indent=1) + "\n"
    return files
