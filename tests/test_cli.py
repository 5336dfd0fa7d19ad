"""The command line as users drive it: help, JSON, exit codes, dry runs."""

import json
import subprocess
import sys

import pytest

from grail_cluster.cli.main import main
from tests.conftest import base_overrides


@pytest.mark.parametrize("command", ["index", "doctor", "plan", "render", "run"])
def test_help(command):
    proc = subprocess.run([sys.executable, "-m", "grail_cluster", command, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: grail-cluster" in proc.stdout


def test_console_script_version():
    proc = subprocess.run([sys.executable, "-m", "grail_cluster", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip().startswith("grail-cluster ")


def test_index_json_and_table(hoi_lib, capsys):
    assert main(["index", str(hoi_lib.root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_motions"] == 12 and data["cache"] == "miss"
    assert {m["key"] for m in data["motions"]} == set(hoi_lib.keys)
    assert main(["index", str(hoi_lib.root)]) == 0
    assert "index hit" in capsys.readouterr().out


def test_run_dry_run_writes_and_prints_the_exact_files(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    # The default 8-GPU/480G request fits no local test node: rendered as for a real GPU cluster.
    rc = main(["run", *base_overrides(tmp_path, ha.root, sonic_root, "cluster=slurm", "eval.num_shards=2",
                                      "cluster.check_limits=false"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "dry run: nothing submitted" in out
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    spec_dir = runs[0] / "specs" / "slurm"
    # Printed what was written, byte for byte: every file it shows (all but the eval command list, which
    # the eval array script sources), whole, each under a rule naming its path.
    shown = sorted(p for p in spec_dir.rglob("*") if p.is_file() and p.name != "eval_commands.sh")
    assert {p.name for p in shown} >= {"train.sh", "eval.sh"}
    for path in shown:
        text = path.read_text()
        assert text.strip() and text.rstrip("\n") in out, f"{path} is not printed as written"
        assert str(path) in out
    assert (runs[0] / "plan.json").exists()


def test_run_on_kubernetes_without_a_shared_volume_is_refused_clearly(tmp_path, hoi_pair, sonic_root, capsys):
    # Submitting to Kubernetes itself is tested against an API emulator in tests/test_kubernetes.py.
    _, ha = hoi_pair
    rc = main(["run", *base_overrides(tmp_path, ha.root, sonic_root, "cluster=kubernetes", "cluster.image=x:1")])
    err = capsys.readouterr().err
    assert rc == 2 and "cluster.pvc is not set" in err and "Traceback" not in err


def test_local_run_without_gpus_is_refused_before_anything_runs(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    rc = main(["run", *base_overrides(tmp_path, ha.root, sonic_root, "cluster=local")])
    err = capsys.readouterr().err
    assert rc == 2 and "cluster.gpus" in err


def test_render_out_dir_json(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    out = tmp_path / "rendered"
    rc = main(["render", *base_overrides(tmp_path, ha.root, sonic_root, "cluster=local"), "--out", str(out), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and (out / "local" / "jobs.json").exists() and (out / "plan.json").exists()
    assert sorted(p.split("/")[-1] for p in data["files"]) == sorted(
        ["train.sh", "select.sh", "eval.sh", "render.sh", "export.sh", "merge.sh", "web.sh", "jobs.json",
         "eval_commands.sh"])
