"""Render a plan into job specs and backend files (pure), and write them (the only effect here).

``render_files`` returns {relative path: text}; nothing touches the disk until ``write_files``,
which writes each file to a temp name and renames it, so a crash leaves no half-written script.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from importlib import resources
from pathlib import Path

import jinja2

from grail_cluster import __version__
from grail_cluster.backends import get_backend
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import RunPlan
from grail_cluster.stages import registry


def job_specs(plan: RunPlan) -> list[JobSpec]:
    """One spec per planned stage, in dependency order, from its stage (``stages/<stage>.py``)."""
    specs = [registry.get(s.name).spec(plan) for s in plan.stages]
    for spec in specs:
        spec.python = spec.python or str(plan.settings.job.python)
    return specs


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("grail_cluster.job_templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.globals["q"] = shlex.quote
    env.globals["version"] = __version__
    return env


def render_files(plan: RunPlan, backend: str | None = None) -> dict[str, str]:
    specs = job_specs(plan)
    files = get_backend(backend or plan.backend).render(plan, specs, template_env())
    from grail_cluster.stages.eval import preview_commands

    files["eval_commands.sh"] = (
        f"# SONIC eval command of every eval index of run {plan.run_id} (built in the job from plan.json;\n"
        "# the checkpoint comes from select/selection.json when the job starts).\n"
        + "\n".join(preview_commands(plan)) + "\n"
    )
    return files


def write_files(files: dict[str, str], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for rel, text in sorted(files.items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        if rel.endswith(".sh"):
            os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written
