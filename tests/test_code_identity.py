"""A run dir's done shards are reused only for the code that made them: the plan hash holds a
digest of grail-cluster's own files and of SONIC's uncommitted changes, so a re-run of a submitted
run after a code change is refused by name instead of resuming on old results (issue 14 §2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from grail_cluster.cli.main import main
from grail_cluster.core import provenance as prov
from grail_cluster.core.code_digest import git_state, task_sources, tree_digest
from grail_cluster.core.ledger import Ledger
from tests.conftest import base_overrides
from tests.test_provenance import git, grail_repo, needs_git, plan_cli  # noqa: F401 (grail_repo: fixture)


def _submitted(run_dir: Path, plan_hash: str) -> None:
    """What `run` records when it submits (the ledger's plan hash), without queueing jobs."""
    with Ledger(run_dir) as ledger:
        ledger.set_meta("plan_hash", plan_hash)


@needs_git
def test_rerun_after_a_grail_cluster_code_change_is_refused(tmp_path, hoi_pair, grail_repo, capsys,  # noqa: F811
                                                            monkeypatch):
    _, ha = hoi_pair
    _, sonic = grail_repo
    code = tmp_path / "installed" / "job_templates"  # stands in for the installed package's files
    shutil.copytree(Path(prov.__file__).resolve().parents[2] / "job_templates", code)
    monkeypatch.setattr(prov, "grail_cluster_package_dirs", lambda: [str(code)], raising=False)
    first = plan_cli(tmp_path, ha.root, sonic, capsys)
    run_dir = Path(first["run_dir"])
    _submitted(run_dir, first["plan_hash"])
    assert plan_cli(tmp_path, ha.root, sonic, capsys)["plan_hash"] == first["plan_hash"]  # same code: resumable

    plan_before = (run_dir / "plan.json").read_bytes()
    template = sorted(p for p in code.iterdir() if p.is_file())[0]
    template.write_text(template.read_text() + "\n# a fixed bug\n")  # same version string, other code
    rc = main(["plan", *base_overrides(tmp_path, ha.root, sonic), "--json"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "was submitted with another plan" in err and "changed since: grail-cluster's code" in err
    assert "run.id=" in err and "Traceback" not in err
    assert (run_dir / "plan.json").read_bytes() == plan_before  # the submitted plan is kept
    recorded = json.loads((run_dir / "provenance.json").read_text())["grail_cluster_code"]
    assert recorded["files"] == tree_digest([code])["files"] and recorded != tree_digest([code])  # the old code's


@needs_git
def test_two_different_uncommitted_sonic_edits_are_two_plans(tmp_path, hoi_pair, grail_repo, capsys):  # noqa: F811
    _, ha = hoi_pair
    _, sonic = grail_repo
    agent = sonic / "gear_sonic" / "eval_agent_trl.py"
    agent.write_text("# local fix one\n")
    first = plan_cli(tmp_path, ha.root, sonic, capsys)
    _submitted(Path(first["run_dir"]), first["plan_hash"])
    assert plan_cli(tmp_path, ha.root, sonic, capsys)["plan_hash"] == first["plan_hash"]
    agent.write_text("# local fix two\n")  # still dirty: the dirty flag alone did not change
    rc = main(["plan", *base_overrides(tmp_path, ha.root, sonic), "--json"])
    err = capsys.readouterr().err
    assert rc == 2 and "changed since: SONIC's uncommitted changes" in err


@needs_git
def test_git_state_digests_tracked_changes_only(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    clean = git_state(tmp_path)
    assert clean["dirty"] is False and clean["diff_sha256"] is None and len(clean["commit"]) == 40
    (tmp_path / "outputs.txt").write_text("run output\n")  # untracked
    assert git_state(tmp_path) == clean
    (tmp_path / "a.py").write_text("x = 2\n")
    two = git_state(tmp_path)
    (tmp_path / "a.py").write_text("x = 3\n")
    three = git_state(tmp_path)
    assert two["dirty"] and three["dirty"] and two["diff_sha256"] != three["diff_sha256"]
    assert git_state(tmp_path / "missing") is None


def test_task_sources_follow_project_imports_not_installed_ones(tmp_path, monkeypatch):
    """Imports are followed statically (also inside functions, relative ones in a package), not by
    what happens to be imported, and stop at installed packages."""
    pkg = tmp_path / "proj" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "util.py").write_text("def k():\n    return 1\n")
    (pkg / "deep.py").write_text("Z = 1\n")
    (pkg / "task.py").write_text("import json\nfrom . import util\n\n\ndef run(cfg):\n"
                                 "    from pkg.deep import Z\n    return util.k() + Z + len(json.dumps(cfg))\n")
    monkeypatch.syspath_prepend(str(tmp_path / "proj"))
    import importlib

    task = importlib.import_module("pkg.task").run
    first = task_sources(task)
    assert first["task"] == "pkg.task:run" and first["files"] == 4  # task, __init__, util, deep (not json)
    assert task_sources(task) == first
    (pkg / "deep.py").write_text("Z = 2\n")  # imported only inside the function, never executed here
    assert task_sources(task)["sha256"] != first["sha256"]
