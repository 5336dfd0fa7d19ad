"""The Kubernetes client logic against the ``kmock`` API emulator on 127.0.0.1 (local-infra.md §2).

No real API server runs here. kmock stores objects and answers the official ``kubernetes`` client;
the test plays controller and kubelet (``tests/kubesim.py``): it runs each created Job's rendered
container script for real, per completion index, in rehearsal mode (small real work, real markers),
and writes the Job's status (``completedIndexes``, ``failedIndexes``, ``succeeded``, conditions) and
its Pod objects through the API. What that cannot show: scheduling, the real Job controller's
retries and podFailurePolicy, Kueue, DNS for the rendezvous, RBAC enforcement (docs/kubernetes.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grail_cluster.backends.kubernetes.client import KubernetesBackend
from grail_cluster.backends.kubernetes.driver import Driver
from grail_cluster.backends.refresh import refresh
from grail_cluster.cli.main import main
from grail_cluster.core import config
from grail_cluster.core.errors import GrailError
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.library import scan_library
from grail_cluster.core.markers import marker_path, write_marker
from grail_cluster.core.plan import write_plan
from grail_cluster.runs.control import cancel, resubmit, submit_run
from grail_cluster.runs.job_files import render_files, write_files
from grail_cluster.runs.planner import build_plan
from grail_cluster.runs.status import summarise
from tests.conftest import make_sonic_root
from tests.kubesim import Controller, KmockServer
from tests.libgen import make_library


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("k8srun")
    make_library(root / "lib", 12, fast=True)
    make_sonic_root(root / "SONIC")
    return root


@pytest.fixture
def kube(tmp_path, monkeypatch):
    """A fresh emulator per test; the official client finds it through KUBECONFIG, as on a laptop."""
    pytest.importorskip("kmock", reason="the dev extra installs kmock")
    pytest.importorskip("kubernetes", reason="the kubernetes extra installs the official client")
    server = KmockServer().start()
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield server
    server.stop()


@pytest.fixture
def ctl(kube):
    from kubernetes import client

    return Controller(client.ApiClient(client.Configuration(host=kube.url)))


def overrides(root: Path, run_id: str, *extra: str) -> list[str]:
    return ["pipeline=advanced_manip_table", "cluster=kubernetes", "cluster.image=registry.example/grail:1",
            "cluster.pvc=grail-data", f"cluster.mount_path={root}", f"data.motion_lib={root / 'lib'}",
            f"sonic.root={root / 'SONIC'}", f"run.root={root / 'runs'}", f"run.id={run_id}", "eval.num_shards=3",
            "select.k=1", "rehearsal.enabled=true", f"job.python={sys.executable}", "train.gpus_per_node=1", *extra]


def make(root: Path, run_id: str, *extra: str):
    c = config.load(overrides(root, run_id, *extra))
    plan = build_plan(c, scan_library(c["data"]["motion_lib"]))
    write_plan(plan)
    write_files(render_files(plan), Path(plan.paths["specs_dir"]) / "kubernetes")
    return plan


def drive(plan, ctl: Controller, *, fail: dict[str, dict[int, int]] | None = None, max_steps: int = 20) -> list[list[str]]:
    """Alternate driver passes and the controller running what the driver created; the Jobs each
    pass created, in order."""
    driver = Driver(plan.run_dir, backend=KubernetesBackend(driving=True), log=lambda _msg: None)
    waves = []
    for _ in range(max_steps):
        done = driver.step()
        new = ctl.pending()
        if new:
            waves.append(sorted(new))
        if done:
            assert not new
            return waves
        for name in new:
            ctl.run_job(name, fail_exit=(fail or {}).get(name))
    raise AssertionError(f"the driver did not settle: {waves}")


def waves_of(plan, stages: list[str], suffix: str = "") -> list[list[str]]:
    """The Jobs a driver creates pass after pass for ``stages``: by depth in the plan's DAG."""
    depth: dict[str, int] = {}
    for st in plan.stages:
        depth[st.name] = 1 + max((depth[d.stage] for d in st.depends_on if d.stage in depth), default=-1)
    levels: dict[int, list[str]] = {}
    for name in stages:
        levels.setdefault(depth[name], []).append(f"{plan.run_id}-{name}{suffix}")
    return [sorted(levels[k]) for k in sorted(levels)]


def states(plan) -> dict[str, dict[int, str]]:
    with Ledger(plan.run_dir) as ledger:
        out: dict[str, dict[int, str]] = {}
        for s in ledger.shards():
            out.setdefault(s.stage, {})[s.idx] = s.state
        return out


def status_json(plan, capsys) -> dict:
    capsys.readouterr()
    main(["status", plan.run_dir, "--json"])
    return json.loads(capsys.readouterr().out)


def test_submit_creates_the_driver_and_its_rbac_and_records_every_stage(world, kube, ctl):
    plan = make(world, "ks-submit")
    result = submit_run(plan, backend=KubernetesBackend())
    assert [j["job_id"] for j in result.jobs] == [f"ks-submit-{s}" for s in plan.stage_names]
    # Nothing of the DAG is created yet: only the driver, which creates each stage when it may start.
    assert list(ctl.jobs()) == ["ks-submit-drive"]
    driver = ctl.job("ks-submit-drive")
    pod = driver["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "grail-cluster-driver"
    assert f"drive {plan.run_dir}" in pod["containers"][0]["args"][0]
    assert {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}["GRAIL_DRIVE_ROUND"] == "0"
    for resource in ("serviceaccounts", "roles", "rolebindings"):
        assert len(kube.requests("POST", resource)) == 1
    with Ledger(plan.run_dir) as ledger:
        assert {s.state for s in ledger.shards()} == {"pending"}
        assert ledger.meta("k8s_driver_r0")["name"] == "ks-submit-drive"
        assert ledger.jobs(stage="render")[0].depends == "aftercorr:ks-submit-eval"
    with pytest.raises(GrailError, match="already submitted"):
        submit_run(plan, backend=KubernetesBackend())
    # A second run in the namespace adopts the shared driver identity (409 -> read), no error.
    other = make(world, "ks-submit2")
    submit_run(other, backend=KubernetesBackend())
    assert len(kube.requests("POST", "roles")) == 2 and "ks-submit2-drive" in ctl.jobs()


def test_the_driver_chains_the_stages_and_status_maps_indexes_to_shards(world, kube, ctl, capsys):
    plan = make(world, "ks-chain")
    submit_run(plan, backend=KubernetesBackend())
    waves = drive(plan, ctl)
    assert waves == waves_of(plan, plan.stage_names)
    assert waves[:3] == [["ks-chain-train"], ["ks-chain-select"], ["ks-chain-eval"]] and waves[-1] == ["ks-chain-web"]
    ev = ctl.job("ks-chain-eval")
    assert ev["spec"]["completions"] == 3 and ev["metadata"]["annotations"]["grail-cluster/indices"] == "0-2"
    assert {s: set(v.values()) for s, v in states(plan).items()} == {s: {"done"} for s in plan.stage_names}
    # Each pod wrote its shard's log through the index table.
    log = (Path(plan.run_dir) / "logs" / "eval" / "2" / "0.out").read_text()
    assert "[grail] eval index 2 attempt 0" in log and "rehearsal eval 2 done" in log
    ctl.finish("ks-chain-drive")
    data = status_json(plan, capsys)
    assert data["ok"] and data["finished"] and data["notes"] == []
    with Ledger(plan.run_dir) as ledger:
        shard = ledger.shard("eval", 1)
        assert shard.job_id == "ks-chain-eval" and shard.state == "done" and shard.attempt == 0


def test_a_failed_shard_stops_its_dependants_and_resubmit_runs_only_it(world, kube, ctl, capsys):
    plan = make(world, "ks-fail", "rehearsal.faults=[eval/1:exit1]")
    submit_run(plan, backend=KubernetesBackend())
    waves = drive(plan, ctl)
    # eval 1 failed (exit 1, retried once by backoffLimitPerIndex): render/export 0 and 2 still ran,
    # merge (afterok on every export) and web were never created.
    assert waves == waves_of(plan, ["train", "select", "eval", "render", "export"])
    assert ctl.job("ks-fail-render")["metadata"]["annotations"]["grail-cluster/indices"] == "0,2"
    assert ctl.job("ks-fail-eval")["status"]["failedIndexes"] == "1"
    st = states(plan)
    assert st["eval"] == {0: "done", 1: "failed", 2: "done"} and st["render"][1] == "cancelled"
    assert st["merge"] == {0: "cancelled"} and st["web"] == {0: "cancelled"}
    with Ledger(plan.run_dir) as ledger:
        failed = ledger.shard("eval", 1)
        assert (failed.exit_code, failed.node, failed.sched_state) == ("1:0", "node-1", "Error")
        assert ledger.shard("merge", 0).sched_state == "DEPENDENCY_FAILED"
        assert "upstream export 1 is cancelled" in ledger.shard("merge", 0).signature
    # While the driver Job is active it owns the ledger: no second round yet.
    with pytest.raises(GrailError, match="ks-fail-drive of this run is still running"):
        resubmit(plan)
    # The driver pod ended (exit 3 fails its Job at once); a laptop now refreshes itself.
    ctl.finish("ks-fail-drive", failed=True)
    data = status_json(plan, capsys)
    assert data["finished"] and not data["ok"]
    failures = {f["index"]: f for s in data["stages"] if s["name"] == "eval" for f in s["failures"]}
    assert failures[1]["state"] == "failed" and "injected failure" in failures[1]["signature"]
    done_marker = marker_path(plan.run_dir, "eval", 0).stat().st_mtime_ns

    result = resubmit(plan)
    assert {j["stage"]: j["indices"] for j in result.jobs} == {"eval": 1, "render": 1, "export": 1, "merge": 1, "web": 1}
    assert "ks-fail-drive-r1" in ctl.jobs()
    waves = drive(plan, ctl)
    assert waves == waves_of(plan, ["eval", "render", "export", "merge", "web"], "-r1")
    again = ctl.job("ks-fail-eval-r1")
    env = {e["name"]: e.get("value") for e in again["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert again["spec"]["completions"] == 1 and env["GRAIL_INDEX_TABLE"] == "1" and env["GRAIL_ATTEMPT"] == "1"
    # Completion index 0 of the new Job ran shard 1, as attempt 1; shard 0 never ran again.
    assert "[grail] eval index 1 attempt 1" in (Path(plan.run_dir) / "logs" / "eval" / "1" / "1.out").read_text()
    assert not (Path(plan.run_dir) / "logs" / "eval" / "0" / "1.out").exists()
    assert marker_path(plan.run_dir, "eval", 0).stat().st_mtime_ns == done_marker
    ctl.finish("ks-fail-drive-r1")
    data = status_json(plan, capsys)
    assert data["ok"], data["stages"]
    with Ledger(plan.run_dir) as ledger:
        assert [a["state"] for a in ledger.attempts("eval", 1)] == ["failed", "done"]
        assert ledger.shard("eval", 1).job_id == "ks-fail-eval-r1" and ledger.shard("eval", 0).attempt == 0

    # Logs of shard 1 through the API: the newest pod of completion index 0 of ks-fail-eval-r1.
    pod_name = next(r.data["metadata"]["name"] for r in kube.requests("POST", "pods")
                    if r.data["metadata"]["name"].startswith("ks-fail-eval-r1-0-"))
    kube.log_text[pod_name] = "line 1\n[grail] eval index 1 attempt 1\n"
    capsys.readouterr()
    assert main(["logs", plan.run_dir, "--stage", "eval", "--index", "1", "--pod", "-n", "5"]) == 0
    out = capsys.readouterr().out
    assert f"pod {pod_name}" in out and "[grail] eval index 1 attempt 1" in out
    req = kube.requests("GET", "pods")[-1]
    assert req.name == pod_name and req.subresource == "log"
    assert dict(req.params) == {"container": "main", "tailLines": "5"}


def test_the_driver_never_runs_a_done_shard(world, kube, ctl):
    plan = make(world, "ks-done")
    submit_run(plan, backend=KubernetesBackend())
    write_marker(plan.run_dir, "train", 0, plan.plan_hash, {})  # e.g. a pod that finished after a driver crash
    driver = Driver(plan.run_dir, backend=KubernetesBackend(driving=True), log=lambda _msg: None)
    driver.step()
    # No train Job: the shard is done by its marker; select can start at once.
    assert sorted(ctl.stage_jobs()) == ["ks-done-select"]
    with Ledger(plan.run_dir) as ledger:
        assert ledger.shard("train", 0).state == "done" and ledger.meta("k8s_created:ks-done-train") is None


def test_a_restarted_driver_adopts_what_it_created(world, kube, ctl):
    plan = make(world, "ks-adopt")
    submit_run(plan, backend=KubernetesBackend())
    Driver(plan.run_dir, backend=KubernetesBackend(driving=True), log=lambda _m: None).step()
    assert list(ctl.stage_jobs()) == ["ks-adopt-train"]
    # The driver crashed after creating the Job but before the ledger recorded it.
    with Ledger(plan.run_dir) as ledger:
        ledger.db.execute("DELETE FROM meta WHERE key = 'k8s_created:ks-adopt-train'")
    restarted = Driver(plan.run_dir, backend=KubernetesBackend(driving=True), log=lambda _m: None)
    restarted.step()
    restarted.step()
    assert list(ctl.stage_jobs()) == ["ks-adopt-train"]
    posts = [r for r in kube.requests("POST", "jobs") if r.data["metadata"]["name"] == "ks-adopt-train"]
    assert len(posts) == 2  # the second answered 409 and the existing Job was adopted
    with Ledger(plan.run_dir) as ledger:
        created = [json.loads(e["detail"]) for e in ledger.events() if e["kind"] == "k8s-created"]
        assert [c["adopted"] for c in created] == [False, True]
    # A driver Job of another name owning the run: a hand-started driver refuses to be a second writer.
    with pytest.raises(GrailError, match="ks-adopt-drive is already driving"):
        restarted.check_alone()


def test_multinode_training_gets_a_headless_service_and_is_one_shard(world, kube, ctl):
    plan = make(world, "ks-multi", "train.nodes=2")
    submit_run(plan, backend=KubernetesBackend())
    driver = Driver(plan.run_dir, backend=KubernetesBackend(driving=True), log=lambda _m: None)
    driver.step()
    svc = json.loads(ctl.core.read_namespaced_service("ks-multi-train", "default", _preload_content=False).data)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"] == {"job-name": "ks-multi-train"}
    job = ctl.job("ks-multi-train")
    assert job["spec"]["completions"] == 2 and job["spec"]["template"]["spec"]["subdomain"] == "ks-multi-train"
    assert ctl.run_job("ks-multi-train")["completedIndexes"] == "0-1"  # both nodes (machine ranks 0 and 1)
    driver.step()
    assert states(plan)["train"] == {0: "done"} and "ks-multi-select" in ctl.stage_jobs()

    other = make(world, "ks-multi2", "train.nodes=2")
    submit_run(other, backend=KubernetesBackend())
    Driver(other.run_dir, backend=KubernetesBackend(driving=True), log=lambda _m: None).step()
    cancel(other)
    assert [r.name for r in kube.requests("DELETE", "services")] == ["ks-multi2-train"]
    assert states(other)["train"] == {0: "cancelled"}


def test_status_from_another_machine_leaves_the_ledger_to_an_active_driver(world, kube, ctl, capsys):
    plan = make(world, "ks-owner")
    submit_run(plan, backend=KubernetesBackend())
    driver = Driver(plan.run_dir, backend=KubernetesBackend(driving=True), log=lambda _m: None)
    driver.step()
    ctl.run_job("ks-owner-train")
    with Ledger(plan.run_dir) as ledger:
        before = len(ledger.events())
    data = status_json(plan, capsys)
    assert "driver ks-owner-drive is active" in data["notes"][0]
    assert {s["name"]: s["counts"] for s in data["stages"]}["train"] == {"pending": 1}
    with Ledger(plan.run_dir) as ledger:
        assert len(ledger.events()) == before  # nothing written
    driver.step()
    data = status_json(plan, capsys)
    assert {s["name"]: s["counts"] for s in data["stages"]}["train"] == {"done": 1}


def test_a_refresh_costs_two_list_calls_whatever_the_shard_count(world, kube, ctl):
    plan = make(world, "ks-budget", "eval.num_shards=12", "select.k=3")
    submit_run(plan, backend=KubernetesBackend())
    for name in ("train", "select"):
        write_marker(plan.run_dir, name, 0, plan.plan_hash, {})
    Driver(plan.run_dir, backend=KubernetesBackend(driving=True), log=lambda _m: None).step()
    job = ctl.job("ks-budget-eval")
    assert job["spec"]["completions"] == 36
    ctl.set_status("ks-budget-eval", completedIndexes="0-9,20", failedIndexes="11", active=25)
    for k in (10, 12):
        ctl.add_pod(job, k, exit_code=None)
    backend = KubernetesBackend(driving=True)
    with Ledger(plan.run_dir) as ledger:
        refresh(plan, ledger, backend)
        counts = {s.name: s.counts for s in summarise(plan, ledger)}
    assert dict(backend.calls) == {"list_namespaced_job": 1, "list_namespaced_pod": 1}
    assert counts["eval"] == {"missing-output": 11, "failed": 1, "running": 2, "pending": 22}


def test_cancel_deletes_the_runs_jobs_with_background_propagation(world, kube, ctl, capsys):
    plan = make(world, "ks-cancel")
    submit_run(plan, backend=KubernetesBackend())
    Driver(plan.run_dir, backend=KubernetesBackend(driving=True), log=lambda _m: None).step()
    capsys.readouterr()
    assert main(["cancel", plan.run_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cancelled_jobs"] == [f"ks-cancel-{s}" for s in plan.stage_names]
    deleted = {r.name: dict(r.params) for r in kube.requests("DELETE", "jobs")}
    # The driver first (nothing is created afterwards), then the stage Job that existed; pods go with
    # them (the API's default for Jobs would orphan running pods).
    assert deleted == {"ks-cancel-drive": {"propagationPolicy": "Background"},
                       "ks-cancel-train": {"propagationPolicy": "Background"}}
    assert ctl.jobs() == {}
    assert {s: set(v.values()) for s, v in states(plan).items()} == {s: {"cancelled"} for s in plan.stage_names}
    data = status_json(plan, capsys)
    assert data["finished"] and not data["ok"]


def test_cancel_from_a_stage_on_goes_through_the_active_driver(world, kube, ctl):
    plan = make(world, "ks-part")
    submit_run(plan, backend=KubernetesBackend())
    driver = Driver(plan.run_dir, backend=KubernetesBackend(driving=True), log=lambda _m: None)
    for stage in ("train", "select"):
        driver.step()
        ctl.run_job(f"ks-part-{stage}")
    driver.step()
    assert "ks-part-eval" in ctl.stage_jobs()  # eval is running
    ids = cancel(plan, stage="export")
    assert ids == [f"ks-part-{s}" for s in ("export", "merge", "web")]
    # Nothing of these exists yet, so nothing is deleted; the driver is asked, and it writes the ledger.
    assert kube.requests("DELETE", "jobs") == []
    assert ctl.job("ks-part-drive")["metadata"]["annotations"]["grail-cluster/cancel"].split(",") == ids
    assert set(states(plan)["export"].values()) == {"pending"}
    assert not driver.step()
    assert set(states(plan)["export"].values()) == {"cancelled"} and states(plan)["eval"][0] == "pending"
    ctl.run_job("ks-part-eval")
    driver.step()
    ctl.run_job("ks-part-render")
    assert driver.step()  # settled; export, merge and web were never created
    st = states(plan)
    assert all(v == "done" for s in ("train", "select", "eval", "render") for v in st[s].values())
    assert all(v == "cancelled" for s in ("export", "merge", "web") for v in st[s].values())
    assert sorted(ctl.stage_jobs()) == [f"ks-part-{s}" for s in ("eval", "render", "select", "train")]


def test_a_driver_that_ended_early_leaves_resubmittable_shards(world, kube, ctl, capsys):
    plan = make(world, "ks-early")
    submit_run(plan, backend=KubernetesBackend())
    ctl.finish("ks-early-drive", failed=True)  # e.g. its image could not start, backoffLimit exhausted
    data = status_json(plan, capsys)
    assert data["finished"] and {s["name"]: s["counts"] for s in data["stages"]}["eval"] == {"cancelled": 3}
    with Ledger(plan.run_dir) as ledger:
        shard = ledger.shard("train", 0)
        assert shard.sched_state == "NOT_CREATED" and "driver of round 0 ended first" in shard.signature
    result = resubmit(plan)
    assert result.round == 1 and {j["stage"] for j in result.jobs} == set(plan.stage_names)
    assert "ks-early-drive-r1" in ctl.jobs()
    # A driver Job that never came to be (its creation failed) counts as ended only after a minute,
    # so a `status` racing with `run` does not cancel what is about to be driven.
    ctl.batch.delete_namespaced_job("ks-early-drive-r1", "default")
    assert status_json(plan, capsys)["stages"][0]["counts"] == {"pending": 1}
    with Ledger(plan.run_dir) as ledger:
        ledger.set_meta("k8s_driver_r1", {"name": "ks-early-drive-r1", "at": time.time() - 61})
    assert status_json(plan, capsys)["stages"][0]["counts"] == {"cancelled": 1}


def test_run_dry_run_prints_the_manifests_and_run_submits_through_kubeconfig(world, kube, ctl, capsys):
    args = overrides(world, "ks-cli")
    assert main(["run", *args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kind: Job" in out and "completionMode: Indexed" in out and "kind: RoleBinding" in out
    assert "GRAIL_INDEX_TABLE" in out and "dry run: nothing submitted" in out
    assert ctl.jobs() == {}
    assert main(["run", *args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["jobs"][0]["job_id"] == "ks-cli-train" and list(ctl.jobs()) == ["ks-cli-drive"]
    # `grail-cluster drive --once` is what the driver pod runs (one pass here).
    assert main(["drive", data["run_dir"], "--once"]) == 0
    assert list(ctl.stage_jobs()) == ["ks-cli-train"]


def test_run_without_a_cluster_fails_before_recording_anything(world, tmp_path, monkeypatch, capsys):
    pytest.importorskip("kubernetes")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rc = main(["run", *overrides(world, "ks-nocluster")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot load a Kubernetes configuration" in err and "Traceback" not in err
    with Ledger(Path(world) / "runs" / "ks-nocluster") as ledger:
        assert ledger.jobs() == []  # a later `run` submits normally


def test_the_driver_pod_command_runs_the_whole_dag_woken_by_job_events(world, kube, ctl):
    """The driver Job's own container command (bash + `python -m grail_cluster drive`), run as a
    process the way its pod would, while the test thread plays the controller: the DAG settles with
    nobody calling the driver, and the driver is woken by the watch on the run's Jobs."""
    plan = make(world, "ks-loop", "cluster.driver.poll_seconds=10")
    submit_run(plan, backend=KubernetesBackend())
    container = ctl.job("ks-loop-drive")["spec"]["template"]["spec"]["containers"][0]
    # The pod's env: the container's, and its host name (the pod name, <job>-<suffix>).
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "HOSTNAME": "ks-loop-drive-x7k2p"}
    started = time.monotonic()
    proc = subprocess.Popen([*container["command"], container["args"][0]], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 150
    while proc.poll() is None and time.monotonic() < deadline:
        for name in ctl.pending():
            ctl.run_job(name)
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0, out
    assert len(ctl.ran) == len(plan.stage_names)
    assert "round 0 settled: {'done':" in out
    assert "round 0 settled" in (Path(plan.run_dir) / "logs" / "drive" / "r0.out").read_text()
    # Woken by Job events: polling alone would take at least 6 passes x 10 s.
    assert time.monotonic() - started < 50
