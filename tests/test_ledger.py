"""The ledger, the submit lock, and the pure submission planning (chunks, ranges, closure)."""

import subprocess
import sys
import time

import pytest

from grail_cluster.backends.groups import compress_ranges, plan_groups
from grail_cluster.core import config
from grail_cluster.core.errors import GrailError
from grail_cluster.core.ledger import Ledger, submit_lock
from grail_cluster.core.library import scan_library
from grail_cluster.runs.planner import build_plan
from grail_cluster.runs.submission import consumers, downstream_closure
from grail_cluster.stages import registry
from tests.conftest import base_overrides


def test_states_attempts_and_events(tmp_path):
    with Ledger(tmp_path) as ledger:
        ledger.record_job(job_id="10", backend="slurm", stage="eval", chunk=0, round=0, name="r:eval:0",
                          indices=[0, 1, 2], index_offset=0, array_spec="0-2%3", depends=None)
        assert {s.state for s in ledger.shards("eval")} == {"pending"}
        assert ledger.update_shard("eval", 1, "running", sched_state="RUNNING")
        assert not ledger.update_shard("eval", 1, "running")  # no change, no event
        ledger.update_shard("eval", 1, "failed", exit_code="1:0", signature="RuntimeError: x")
        ledger.record_job(job_id="11", backend="slurm", stage="eval", chunk=0, round=1, name="r:eval:0:r1",
                          indices=[1], index_offset=0, array_spec="1%1", depends=None)
        assert ledger.shard("eval", 1).attempt == 1 and ledger.shard("eval", 1).job_id == "11"
        assert [a["state"] for a in ledger.attempts("eval", 1)] == ["failed", "pending"]
        kinds = [e["kind"] for e in ledger.events()]
        assert kinds == ["submitted", "state", "state", "submitted"]
        assert ledger.next_round() == 2
        with pytest.raises(ValueError):
            ledger.update_shard("eval", 0, "exploded")
    # A second connection sees the same, durable, state (WAL).
    with Ledger(tmp_path) as again:
        assert again.shard("eval", 1).state == "pending" and again.shard("eval", 1).attempt == 1
        assert len(again.jobs()) == 2


def test_one_submitter_per_run_dir(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import time,sys; from grail_cluster.core.ledger import submit_lock\n"
                               f"with submit_lock({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(3)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(GrailError) as exc:
        with submit_lock(tmp_path):
            pass
    assert "another grail-cluster process" in str(exc.value) and "--wait" in str(exc.value)
    start = time.time()
    with submit_lock(tmp_path, wait=True):
        assert time.time() - start > 0.5  # waited for the holder
    holder.wait(timeout=10)


def test_compress_ranges():
    assert compress_ranges([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9-10"
    assert compress_ranges([5]) == "5" and compress_ranges([]) == ""


@pytest.fixture
def plan(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    c = config.load(base_overrides(tmp_path, ha.root, sonic_root, "eval.num_shards=6", "select.k=2"))
    return build_plan(c, scan_library(ha.root))


def test_chunks_offsets_and_aftercorr_partners(plan):
    selected = {st.name: list(range(st.size)) for st in plan.stages}
    groups = plan_groups(plan, selected, arrays=registry.arrays(plan), max_array_size=5, parallelism=6)
    evals = [g for g in groups if g.stage == "eval"]
    assert [(g.offset, g.task_ids) for g in evals] == [(0, [0, 1, 2, 3, 4]), (5, [0, 1, 2, 3, 4]), (10, [0, 1])]
    assert sum(g.parallelism for g in evals) <= 6
    renders = [g for g in groups if g.stage == "render"]
    assert [d.chunk for g in renders for d in g.depends] == [0, 1, 2]
    exports = [g for g in groups if g.stage == "export"]
    assert [(d.kind, d.stage, d.chunk) for g in exports for d in g.depends] == [
        ("aftercorr", "render", 0), ("aftercorr", "render", 1), ("aftercorr", "render", 2)]
    merge = next(g for g in groups if g.stage == "merge")
    assert {(d.kind, d.stage) for d in merge.depends} == {("afterok", "export")}


def test_resubmit_groups_split_by_what_upstream_reruns(plan):
    # eval 3 failed (render/export 3 cancelled with it); render 8 failed on its own (eval 8 is done).
    groups = plan_groups(plan, {"eval": [3], "render": [3, 8], "export": [3], "merge": [0, 1], "web": [0]},
                         arrays=registry.arrays(plan),
                         max_array_size=None, parallelism=None)
    renders = [g for g in groups if g.stage == "render"]
    assert [(g.indices, [d.kind for d in g.depends]) for g in renders] == [([3], ["aftercorr"]), ([8], [])]
    assert next(g for g in groups if g.stage == "eval").depends == []  # select is done: nothing to wait for


def test_downstream_closure(plan):
    not_done = {"eval": {3}, "render": {3}, "export": {3}, "merge": {0}, "web": {0}}
    out = downstream_closure(plan, {"eval": {3}}, not_done)
    assert out == {"eval": {3}, "render": {3}, "export": {3}, "merge": {0}, "web": {0}}


def test_consumers_of_a_rerun_shard_include_done_work(plan):
    """eval 3 (checkpoint 0 of 2, 6 shards each) re-runs: its render/export, checkpoint 0's merge
    and the web stage read it; checkpoint 1's merge does not."""
    assert consumers(plan, {"eval": {3}}) == {"eval": {3}, "render": {3}, "export": {3}, "merge": {0}, "web": {0}}
    assert consumers(plan, {"export": {7}})["merge"] == {1}


def test_damaged_ledgers_are_refused_not_recreated(tmp_path):
    from grail_cluster.core.errors import DataError
    from grail_cluster.core.ledger import SCHEMA_VERSION

    with Ledger(tmp_path) as ledger:
        assert ledger.meta("schema_version") == SCHEMA_VERSION
    path = tmp_path / "ledger.sqlite"
    good = path.read_bytes()
    for damage, needle in ((b"", "empty"), (b"not a database at all" * 50, "damaged")):
        path.write_bytes(damage)
        with pytest.raises(DataError) as exc:
            Ledger(tmp_path)  # even the creating constructor refuses an existing damaged file
        assert needle in str(exc.value) and "repair-ledger" in str(exc.value)
        assert path.read_bytes() == damage  # left as found
    path.write_bytes(good)
    with Ledger(tmp_path) as ledger:
        ledger.set_meta("schema_version", SCHEMA_VERSION + 1)
    with pytest.raises(DataError) as exc:
        Ledger(tmp_path, create=False)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(exc.value)
    with pytest.raises(DataError) as exc:
        Ledger(tmp_path / "never-submitted", create=False)
    assert "no ledger.sqlite" in str(exc.value)


def test_the_dependency_gate():
    """One rule for the local runner and the Kubernetes driver (SLURM applies it itself)."""
    from grail_cluster.backends.base import gate

    done, running, failed = "done", "running", "failed"
    # aftercorr: only the same index counts, and only if it runs upstream in this round.
    assert gate(3, [("aftercorr", "eval", {3: done, 4: failed})]).state == "ready"
    assert gate(3, [("aftercorr", "eval", {3: running, 4: failed})]).state == "waiting"
    assert gate(5, [("aftercorr", "eval", {3: running})]).state == "ready"
    blocked = gate(3, [("aftercorr", "eval", {3: "timeout"})])
    assert (blocked.state, blocked.why) == ("blocked", "upstream eval 3 is timeout")
    # afterok: every upstream shard; a failure blocks at once, even while others still run.
    assert gate(0, [("afterok", "export", {0: done, 1: running})]).state == "waiting"
    blocked = gate(0, [("afterok", "export", {0: running, 1: failed, 2: "unsubmitted"})])
    assert blocked.why == "upstream export 1 is failed (and 1 more)"
    # The first blocking dependency names the reason.
    assert gate(0, [("afterok", "a", {0: done}), ("afterok", "b", {0: "cancelled"})]).why == "upstream b 0 is cancelled"
    assert gate(0, []).state == "ready"


def test_every_registered_backend_speaks_the_protocol():
    from grail_cluster.backends import BACKENDS, get_backend
    from grail_cluster.backends.base import Backend

    for name in BACKENDS:
        backend = get_backend(name)
        assert isinstance(backend, Backend) and backend.name == name
    with pytest.raises(GrailError) as exc:
        get_backend("nomad")
    assert "cluster=nomad is not supported" in str(exc.value)
