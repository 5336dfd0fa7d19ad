"""Rendering: golden files for every pipeline x backend (and the variants users hit), plus checks
that each rendered file is valid for what consumes it: bash, Kubernetes' schemas, real sbatch."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from grail_cluster.core import config
from grail_cluster.core.library import scan_library
from grail_cluster.runs.job_files import render_files, write_files
from grail_cluster.runs.planner import build_plan
from tests.conftest import BACKENDS, PIPELINES, make_sonic_root
from tests.libgen import make_ha_pair, make_terrain_library

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("GRAIL_UPDATE_GOLDEN") == "1"
K8S_VERSION = "1.33.0"

# (case name, pipeline, backend, extra overrides)
VARIANTS = [
    ("slurm_multinode", "pnp_table", "slurm", ["train.nodes=4", "cluster.partition=gpu", "cluster.account=grail",
                                               "cluster.qos=high", "cluster.array_parallelism=2"]),
    ("slurm_gres_smoke", "pnp_ground", "slurm", ["train.smoke=true", "select.k=1", "cluster.gpu_directive=gres", "train.gpus_per_node=1",
                                                 'cluster.extra_directives=["--reservation=grail"]']),
    ("slurm_finetune_balanced", "pnp_table", "slurm", ["train.finetune.checkpoint=release", "train.finetune.resume=true",
                                                       "eval.sharding=balanced", "train.seed=7",
                                                       "'++sonic.extra_overrides=[\"++callbacks.model_save.save_frequency=250\"]'"]),
    ("kubernetes_multinode", "terrain_tracking", "kubernetes", ["train.nodes=2", "cluster.queue=grail-queue",
                                                                "cluster.pvc=grail-data", "cluster.service_account=grail"]),
    ("local_explicit_checkpoints", "advanced_manip_table", "local", ["select.checkpoints=[@CKPT@]", "web.enabled=false"]),
]
CASES = [(f"{p}_{b}", p, b, []) for p in PIPELINES for b in BACKENDS] + VARIANTS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    make_ha_pair(root / "data", "pickup_table", 9, seed=3)
    make_terrain_library(root / "terrain", 7, seed=3)
    make_sonic_root(root / "SONIC")
    (root / "ckpt").mkdir()
    (root / "ckpt" / "model_step_001500.pt").write_bytes(b"weights")
    return root


def _overrides(world: Path, pipeline: str, backend: str, extra: list[str]) -> list[str]:
    lib = world / ("terrain" if pipeline == "terrain_tracking" else "data/pickup_table_ha")
    out = [f"pipeline={pipeline}", f"cluster={backend}", f"data.motion_lib={lib}", f"sonic.root={world / 'SONIC'}",
           f"run.root={world / 'runs'}", "run.id=golden", "eval.num_shards=3", "select.k=2", "sonic.wandb_mode=offline"]
    if backend == "kubernetes":
        out.append("cluster.image=registry.example/grail-sonic:1.0")
    return out + [e.strip("'").replace("@CKPT@", str(world / "ckpt" / "model_step_001500.pt")) for e in extra]


def render_case(world: Path, pipeline: str, backend: str, extra: list[str]):
    c = config.load(_overrides(world, pipeline, backend, extra))
    layout = "terrain" if c["pipeline"]["kind"] == "terrain" else "auto"
    plan = build_plan(c, scan_library(c["data"]["motion_lib"], layout=layout))
    return plan, render_files(plan)


def normalise(text: str, world: Path, plan_hash: str) -> str:
    # job.python defaults to the interpreter running the tests: a machine's path, not part of the golden.
    text = text.replace(config.job_python_default("slurm"), "<PYTHON>")
    return text.replace(str(world), "<TMP>").replace(plan_hash, "<PLAN_HASH>").replace(plan_hash[:12], "<PLAN>")


@pytest.mark.parametrize("case,pipeline,backend,extra", CASES, ids=[c[0] for c in CASES])
def test_golden(world, case, pipeline, backend, extra):
    plan, files = render_case(world, pipeline, backend, extra)
    expected_dir = GOLDEN / case
    got = {rel: normalise(text, world, plan.plan_hash) for rel, text in files.items()}
    if UPDATE:
        for old in expected_dir.glob("*") if expected_dir.exists() else []:
            old.unlink()
        write_files(got, expected_dir)
    assert expected_dir.is_dir(), f"no golden files for {case}: run with GRAIL_UPDATE_GOLDEN=1 and review the diff"
    assert sorted(got) == sorted(p.name for p in expected_dir.iterdir())
    for rel, text in got.items():
        assert text == (expected_dir / rel).read_text(), f"{case}/{rel} differs from the golden file"


@pytest.mark.parametrize("case,pipeline,backend,extra", CASES, ids=[c[0] for c in CASES])
def test_rendered_files_are_valid(world, case, pipeline, backend, extra, tmp_path):
    plan, files = render_case(world, pipeline, backend, extra)
    for path in write_files(files, tmp_path):
        if path.suffix == ".sh":
            subprocess.run(["bash", "-n", str(path)], check=True)
        if path.suffix == ".yaml":
            check_manifests(path, plan)


def check_manifests(path: Path, plan) -> None:
    import kubernetes_validate

    from grail_cluster.backends.kubernetes.lint import lint_manifest

    stage = path.stem
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
        # The project's own checks (enum values, index table and ranges; tests/test_kubernetes_render.py).
        assert lint_manifest(doc, stage_size=None if stage == "driver" else plan.stage(stage).size) == []
    if stage == "driver":
        return
    job = next(d for d in docs if d["kind"] == "Job")
    spec = job["spec"]
    # What the schema does not check: enum values and index ranges.
    assert spec["completionMode"] == "Indexed"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    st = plan.stage(stage)
    expected = st.resources.nodes if st.resources.nodes > 1 else st.size
    assert spec["completions"] == expected and 1 <= spec["parallelism"] <= spec["completions"]
    if "backoffLimitPerIndex" in spec:
        assert spec["backoffLimitPerIndex"] >= 0
    for rule in spec["podFailurePolicy"]["rules"]:
        assert rule["action"] in {"Ignore", "FailIndex", "FailJob", "Count"}
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["GRAIL_INDEX_TABLE"]["value"] == ("0" if st.resources.nodes > 1 else f"0-{st.size - 1}" if st.size > 1 else "0")


def test_scripts_carry_sonic_commands(world):
    plan, files = render_case(world, "pnp_table", "slurm", [])
    train = files["train.sh"]
    assert "accelerate launch --num_processes=8 gear_sonic/train_agent_trl.py +exp=manager/universal_token/hoi/pnp_table" in train
    assert "num_envs=2048 headless=True" in train
    for key in ("motion_file=", "object_motion_file=", "object_usd_path=", "bps_dir="):
        assert key in train
    assert "#SBATCH --requeue" in train and "#SBATCH --signal=USR2@120" in train and "USR1" not in train
    assert "--no-requeue" not in train
    # SLURM's default requeue would rerun a shard of a failed node unseen; only training resumes itself.
    for stage in ("select", "eval", "render", "export", "merge", "web"):
        assert "#SBATCH --no-requeue" in files[f"{stage}.sh"] and "#SBATCH --requeue" not in files[f"{stage}.sh"]
    assert "export WANDB_MODE=offline" in train and "export HYDRA_FULL_ERROR=1" in train
    assert "#SBATCH --array=0-5%6" in files["eval.sh"]
    ev = files["eval_commands.sh"]
    assert ev.count("+manager_env/terminations=tracking/eval") == 6
    assert "motion_shard_world_size=3" in ev and "motion_shard_rank=2" in ev
    assert "--dependency=aftercorr:$JOB_eval" in files["submit.sh"]
    smoke = render_case(world, "pnp_table", "slurm", ["train.smoke=true", "select.k=1"])[1]["train.sh"]
    assert "num_envs=4 headless=True ++algo.config.num_learning_iterations=3" in smoke
    assert "gpu_collision_stack_size_exp=28" in smoke


@pytest.mark.slurm
def test_sbatch_accepts_every_rendered_script(world, tmp_path, slurm_cluster):
    """The real sbatch (--test-only) parses the directives and finds the request satisfiable."""
    _, files = render_case(world, "pnp_table", "slurm", ["train.gpus_per_node=8", "resources.train.mem=4",
                                                         "resources.train.cpus=8", "resources.eval.mem=2",
                                                         "resources.render.mem=2", "resources.export.mem=2",
                                                         "resources.merge.mem=2", "resources.web.mem=2",
                                                         "resources.select.mem=2"])
    for path in write_files(files, tmp_path):
        if path.suffix != ".sh" or path.name in ("submit.sh", "eval_commands.sh"):
            continue
        proc = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
        assert "to start at" in proc.stderr, proc.stderr
