"""The central plan: stages, rank slices, eval shards, hashing, and errors before anything is written."""

import json

import pytest

from grail_cluster.cli.main import main
from grail_cluster.core import config
from grail_cluster.core.errors import ConfigError, DataError
from grail_cluster.core.library import scan_library
from grail_cluster.core.plan import read_plan, write_plan
from grail_cluster.runs.planner import build_plan
from tests.conftest import base_overrides


def make_plan(tmp_path, lib, sonic, *extra):
    c = config.load(base_overrides(tmp_path, lib, sonic, *extra))
    layout = "terrain" if c["pipeline"]["kind"] == "terrain" else "auto"
    return build_plan(c, scan_library(c["data"]["motion_lib"], layout=layout))


def test_stage_dag_and_sizes(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    plan = make_plan(tmp_path, ha.root, sonic_root, "eval.num_shards=4", "select.k=3")
    assert plan.stage_names == ["train", "select", "eval", "render", "export", "merge", "web"]
    deps = {s.name: [(d.stage, d.kind) for d in s.depends_on] for s in plan.stages}
    assert deps == {
        "train": [], "select": [("train", "afterok")], "eval": [("select", "afterok")],
        "render": [("eval", "aftercorr")], "export": [("render", "aftercorr")],  # export copies the videos
        "merge": [("export", "afterok")], "web": [("merge", "afterok")],
    }
    sizes = {s.name: s.size for s in plan.stages}
    assert sizes == {"train": 1, "select": 1, "eval": 12, "render": 12, "export": 12, "merge": 3, "web": 1}
    assert plan.stage("train").requeue and not plan.stage("eval").requeue
    assert plan.eval_index(7)[0] == 1 and plan.eval_index(7)[1].shard == 3
    with pytest.raises(IndexError):
        plan.eval_index(12)
    no_render = make_plan(tmp_path, ha.root, sonic_root, "render.enabled=false")
    assert [(d.stage, d.kind) for d in no_render.stage("export").depends_on] == [("eval", "aftercorr")]


def test_explicit_checkpoints_skip_train_and_select(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    ckpts = []
    for step in (500, 1000):
        p = tmp_path / f"model_step_{step:06d}.pt"
        p.write_bytes(b"x")
        ckpts.append(str(p))
    plan = make_plan(tmp_path, ha.root, sonic_root, f"select.checkpoints=[{','.join(ckpts)}]", "render.enabled=false",
                     "web.enabled=false", "eval.num_shards=3")
    assert plan.stage_names == ["eval", "export", "merge"]
    assert plan.stage("eval").depends_on == [] and plan.stage("eval").size == 6
    assert plan.stage("merge").depends_on[0].stage == "export"


def test_hoi_rank_slices_reproduce_sonic(tmp_path, hoi_pair, sonic_root):
    plain, ha = hoi_pair
    plan = make_plan(tmp_path, ha.root, sonic_root, "train.gpus_per_node=5", "train.num_envs=2")
    keys = sorted(ha.keys)
    T, W = len(keys), 5
    ranks = plan.train["ranks"]
    assert [r["motion_keys"] for r in ranks] == [keys[r * T // W:(r + 1) * T // W] for r in range(W)]
    for r in ranks:
        assert r["usd_paths"] == [str(plain.root / "object_usd" / f"{k}.usd") for k in r["motion_keys"]]
        assert r["unused_past_num_envs"] == max(0, len(r["motion_keys"]) - 2)
    assert plan.train["never_trained"] == sum(r["unused_past_num_envs"] for r in ranks) > 0
    assert any("never used" in w for w in plan.warnings)


def test_terrain_rank_windows_and_never_trained_warning(tmp_path, terrain_lib, sonic_root):
    plan = make_plan(tmp_path, terrain_lib.root, sonic_root, "pipeline=terrain_tracking", "train.gpus_per_node=2",
                     "train.num_envs=3", "eval.num_shards=3")
    keys = sorted(terrain_lib.keys)
    ranks = plan.train["ranks"]
    assert [r["motion_keys"] for r in ranks] == [[keys[(r * 3 + i) % 10] for i in range(3)] for r in range(2)]
    assert plan.train["never_trained"] == 4
    assert any("4 of 10 motion keys are never trained" in w for w in plan.warnings)
    # Terrain eval shards are exact key lists with num_envs == shard size (no window wrap-around).
    for shard in plan.eval_shards:
        assert shard.num_envs == len(shard.motion_keys)
        assert any("filter_motion_keys" in o for o in shard.sonic_overrides)


def test_eval_shards_cover_every_motion_once(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    for strategy in ("sonic_block", "balanced"):
        plan = make_plan(tmp_path, ha.root, sonic_root, "eval.num_shards=5", f"eval.sharding={strategy}")
        seen = [k for s in plan.eval_shards for k in s.motion_keys]
        assert sorted(seen) == sorted(ha.keys) and len(seen) == len(set(seen))
        assert all(s.num_envs >= len(s.motion_keys) for s in plan.eval_shards)
        if strategy == "sonic_block":
            assert plan.eval_shards[2].sonic_overrides[-1].endswith("motion_shard_rank=2")
        else:
            assert all(o.startswith("++") for o in plan.eval_shards[0].sonic_overrides)


def test_eval_num_envs_below_shard_size_is_refused(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    with pytest.raises(ConfigError) as exc:
        make_plan(tmp_path, ha.root, sonic_root, "eval.num_shards=2", "eval.num_envs=4")
    assert "one batch per shard" in str(exc.value) and "eval.num_shards=3" in str(exc.value)
    with pytest.raises(ConfigError):
        make_plan(tmp_path, ha.root, sonic_root, "eval.num_shards=13")


def test_same_inputs_same_hash_and_round_trip(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    a = make_plan(tmp_path, ha.root, sonic_root)
    b = make_plan(tmp_path, ha.root, sonic_root)
    assert a.plan_hash == b.plan_hash and a.run_id == b.run_id
    assert a.plan_hash != make_plan(tmp_path, ha.root, sonic_root, "eval.num_shards=3").plan_hash
    path = write_plan(a)
    again = read_plan(path.parent)
    assert again.plan_hash == a.plan_hash and again.stage_names == a.stage_names
    # A hand edit is caught: the job would otherwise run a slice the plan hash does not vouch for.
    data = json.loads(path.read_text())
    data["eval"]["shards"][0]["motion_keys"].pop()
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as exc:
        read_plan(path.parent)
    assert "plan_hash" in str(exc.value)


def test_library_not_ready_is_refused_with_the_doctor_command(tmp_path, hoi_pair, sonic_root):
    plain, _ = hoi_pair
    with pytest.raises(DataError) as exc:
        make_plan(tmp_path, plain.root, sonic_root)
    assert "hand_action" in str(exc.value) and "grail-cluster doctor" in str(exc.value)
    with pytest.raises(DataError) as exc:
        make_plan(tmp_path, plain.root, sonic_root, "pipeline=terrain_tracking")
    assert "flat_placeholder.usd not found" in str(exc.value)


def test_hoi_pipeline_on_a_terrain_root_is_refused(tmp_path, terrain_lib, sonic_root):
    with pytest.raises(ConfigError) as exc:
        make_plan(tmp_path, terrain_lib.root, sonic_root, "pipeline=pnp_ground")
    assert "terrain_tracking" in str(exc.value)


def test_cli_errors_before_anything_is_written(tmp_path, hoi_pair, sonic_root, capsys, chdir_tmp):
    _, ha = hoi_pair
    cases = [
        ([f"sonic.root={sonic_root}"], "data.motion_lib"),
        ([f"data.motion_lib={tmp_path / 'missing'}", f"sonic.root={sonic_root}"], "motion library not found"),
        ([f"data.motion_lib={ha.root}", f"sonic.root={sonic_root}", f"data.bps_dir={tmp_path / 'nobps'}"], "data.bps_dir"),
        ([f"data.motion_lib={ha.root}", f"sonic.root={sonic_root}", "eval.sharding=random"], "eval.sharding"),
        ([f"data.motion_lib={ha.root}", f"sonic.root={sonic_root}", "cluster=kubernetes"], "cluster.image"),
        ([f"data.motion_lib={ha.root}", f"sonic.root={sonic_root}", "eval.nope=1"], "eval.nope"),
    ]
    for overrides, needle in cases:
        rc = main(["plan", *overrides])
        err = capsys.readouterr().err
        assert rc == 2, (overrides, err)
        assert needle in err and "Traceback" not in err
    assert not (chdir_tmp / "runs").exists()


def test_cli_plan_json(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    rc = main(["plan", *base_overrides(tmp_path, ha.root, sonic_root, "eval.num_shards=3"), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["eval"]["num_shards"] == 3 and data["motions"] == 12
    assert json.loads(open(data["plan_file"]).read())["plan_hash"] == data["plan_hash"]


def test_a_submitted_runs_plan_is_never_replaced_by_another(tmp_path, hoi_pair, sonic_root):
    from grail_cluster.core.errors import GrailError
    from grail_cluster.core.ledger import Ledger
    from grail_cluster.core.plan import submitted_plan_hash, write_plan

    _, ha = hoi_pair
    plan = make_plan(tmp_path, ha.root, sonic_root, "run.id=fixed", "eval.num_shards=2")
    path = write_plan(plan)
    with Ledger(plan.run_dir) as ledger:
        ledger.set_meta("plan_hash", plan.plan_hash)  # as submit_run records it
    before = path.read_bytes()
    other = make_plan(tmp_path, ha.root, sonic_root, "run.id=fixed", "eval.num_shards=3")
    assert other.run_dir == plan.run_dir and other.plan_hash != plan.plan_hash
    with pytest.raises(GrailError, match="submitted with another plan"):
        write_plan(other)
    assert path.read_bytes() == before and submitted_plan_hash(plan.run_dir) == plan.plan_hash
    write_plan(plan)  # the same plan again is fine


# ----------------------------------------------------------------------------- plan-time checks (issue 13 §3)


def test_checkpoint_count_follows_the_rendered_command_line():
    from grail_cluster.runs.planner import checkpoints_written, training_schedule

    pipeline = {"iterations": 20000, "save_frequency": 500}
    assert training_schedule(["x.py", "num_envs=4"], pipeline) == (20000, 500, "release config")
    argv = ["++algo.config.num_learning_iterations=150", "++callbacks.model_save.save_frequency=50"]
    assert training_schedule(argv, pipeline)[:2] == (150, 50)
    # Given twice (train.save_frequency, then a user override): Hydra's last value is what SONIC reads.
    assert training_schedule(argv + ["++callbacks.model_save.save_frequency=75"], pipeline)[:2] == (150, 75)
    # A key SONIC never reads (contracts §2.2) would leave the period at 500: refused, not counted.
    with pytest.raises(ConfigError, match=r"algo.config.save_frequency=25 .* never reads"):
        training_schedule(argv + ["++algo.config.save_frequency=25"], pipeline)
    assert [checkpoints_written(i, p) for i, p in ((150, 50), (160, 50), (3, 500), (20000, 500))] == [3, 4, 1, 40]


def test_k_within_the_schedule_plans(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    plan = make_plan(tmp_path, ha.root, sonic_root, "train.iterations=1000", "train.save_frequency=500", "select.k=2")
    assert plan.eval["num_checkpoints"] == 2
    with pytest.raises(ConfigError, match=r"select.k=3 .* at most 2 checkpoint"):
        make_plan(tmp_path, ha.root, sonic_root, "train.iterations=1000", "train.save_frequency=500", "select.k=3")
    # Explicit checkpoints: nothing is trained, so the schedule does not apply.
    ckpt = tmp_path / "model_step_000500.pt"
    ckpt.write_bytes(b"x")
    make_plan(tmp_path, ha.root, sonic_root, "train.iterations=10", f"select.checkpoints=[{ckpt}]", "select.k=9")


SINFO = """debug*|infinite|1-infinite|16|16000|gpu:8|up
gpu|1-00:00:00|1-2|64|512000|gpu:h100:8(S:0-1),shard:h100:16|up
gpu|1-00:00:00|1-2|64|512000|gpu:h100:4(S:0)|up
short|30:00|1|8|32000|(null)|down
"""


def test_sinfo_is_read_as_sinfo_documents_it():
    from grail_cluster.core.plan_checks import parse_sinfo

    parts = parse_sinfo(SINFO)
    assert parts["debug"].default and parts["debug"].time_min is None and parts["debug"].max_nodes is None
    assert parts["gpu"].time_min == 1440 and parts["gpu"].max_nodes == 2
    assert parts["gpu"].nodes == [(64, 512000, 8), (64, 512000, 4)]  # the shard GRES is not a GPU
    assert parts["short"].time_min == 30 and parts["short"].nodes == [(8, 32000, 0)] and parts["short"].avail == "down"


def test_partition_check_names_each_key(tmp_path, hoi_pair, sonic_root):
    from grail_cluster.core.plan_checks import check_partition

    _, ha = hoi_pair
    fits = [f"resources.{s}.{k}={v}" for s in ("train", "select", "eval", "render", "export", "merge", "web")
            for k, v in (("time", 60), ("mem", 8), ("cpus", 4))]
    plan = make_plan(tmp_path, ha.root, sonic_root, "cluster=slurm", "cluster.partition=gpu", *fits)
    assert check_partition(plan, SINFO) == []
    # Two 8-GPU nodes exist only once: one has 8, the other 4.
    two = make_plan(tmp_path, ha.root, sonic_root, "cluster=slurm", "cluster.partition=gpu", "train.nodes=2", *fits)
    with pytest.raises(ConfigError, match="fits no 2 node"):
        check_partition(two, SINFO)
    slow = make_plan(tmp_path, ha.root, sonic_root, "cluster=slurm", "cluster.partition=short", "train.device=cpu",
                     *fits)
    with pytest.raises(ConfigError) as exc:
        check_partition(slow, SINFO)
    text = exc.value.render()
    assert "resources.train.time=60" in text and "resources.train.time=30" in text
    assert "resources.eval.gpus=1" in text and "fix:" in text
