"""Kubernetes rendering without an API server: strict schemas (kubernetes-validate) for a current and
the oldest supported Kubernetes, the project's own checks for what schemas miss, the index table as
the pod's shell really reads it, per-submission copies, Kueue, secrets, multi-node training, and the
pure mapping from Job status and pods to shard states."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from grail_cluster.backends.kubernetes import lint
from grail_cluster.backends.kubernetes import names as k8s_names
from grail_cluster.backends.kubernetes import render as manifests
from grail_cluster.backends.kubernetes import states as k8s_states
from grail_cluster.core import config
from grail_cluster.core.errors import EXIT_USAGE, ConfigError, DataError, GrailError
from grail_cluster.core.library import scan_library
from grail_cluster.runs.job_files import render_files
from grail_cluster.runs.planner import build_plan
from tests.conftest import make_sonic_root
from tests.libgen import make_library, make_terrain_library

VERSIONS = ("1.33.0", kubernetes_validate.utils.latest_version())  # backoffLimitPerIndex is GA since 1.33


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("k8srender")
    make_library(root / "lib", 16, fast=True)
    make_terrain_library(root / "terrain", 7, seed=3)
    make_sonic_root(root / "SONIC")
    return root


def render(world: Path, *extra: str, lib: str = "lib", pipeline: str = "advanced_manip_table"):
    c = config.load([f"pipeline={pipeline}", "cluster=kubernetes", "cluster.image=registry.example/grail:1",
                     f"data.motion_lib={world / lib}", f"sonic.root={world / 'SONIC'}", f"run.root={world / 'runs'}",
                     "run.id=kr", "eval.num_shards=4", "select.k=2", "cluster.pvc=grail-data", *extra])
    layout = "terrain" if c["pipeline"]["kind"] == "terrain" else "auto"
    plan = build_plan(c, scan_library(c["data"]["motion_lib"], layout=layout))
    files = render_files(plan)
    docs = {rel: [d for d in yaml.safe_load_all(text) if d] for rel, text in files.items() if rel.endswith(".yaml")}
    return plan, files, docs


def job_of(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Job")


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_every_manifest_and_submitted_copy_validates_strictly(world):
    plan, _, docs = render(world, "cluster.queue=gpu-queue", "+cluster.secret_env.WANDB_API_KEY={secret:wandb,key:api-key}",
                           "cluster.image_pull_secrets=[regcred]", "cluster.max_failed_indexes=3")
    assert set(docs) == {f"{s}.yaml" for s in plan.stage_names} | {"driver.yaml"}
    copies = []
    for stage in plan.stage_names:
        size = plan.stage(stage).size
        copies += manifests.retarget(docs[f"{stage}.yaml"], name=k8s_names.job_name("kr", stage, 1, 2),
                               indices=[size - 1], round_=2)
    _, drv = manifests.driver_objects(docs["driver.yaml"], name=k8s_names.driver_name("kr", 2), round_=2)
    for version in VERSIONS:
        for doc in [d for ds in docs.values() for d in ds] + copies + [drv]:
            kubernetes_validate.validate(doc, version, strict=True)
    for rel, ds in docs.items():
        stage = rel.removesuffix(".yaml")
        for doc in ds:
            assert lint.lint_manifest(doc, stage_size=None if stage == "driver" else plan.stage(stage).size) == []
    for doc in copies + [drv]:
        assert lint.lint_manifest(doc) == []


def test_own_checks_catch_what_the_schemas_miss(world):
    plan, _, docs = render(world)
    job = job_of(docs["eval.yaml"])
    good = lint.lint_manifest(job, stage_size=8)
    assert good == []

    def broken(change) -> list[str]:
        import copy

        bad = copy.deepcopy(job)
        change(bad)
        # The schemas accept every one of these (enum values and ranges are not in them) ...
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
        # ... our own checks do not.
        return lint.lint_manifest(bad, stage_size=8)

    assert "completionMode" in broken(lambda j: j["spec"].update(completionMode="indexed"))[0]
    assert "completions 7" in broken(lambda j: j["spec"].update(completions=7, parallelism=7))[0]
    assert "parallelism" in broken(lambda j: j["spec"].update(parallelism=9))[0]
    assert "leaves the stage's indices" in " ".join(broken(lambda j: manifests.set_env(j, "GRAIL_INDEX_TABLE", "0-8")))
    assert "action 'FailIndexes'" in broken(lambda j: j["spec"]["podFailurePolicy"]["rules"][1].update(action="FailIndexes"))[0]
    assert "operator" in broken(lambda j: j["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"].update(operator="Equals"))[0]
    assert "FailIndex action needs backoffLimitPerIndex" in " ".join(broken(lambda j: j["spec"].pop("backoffLimitPerIndex")))
    assert "restartPolicy" in " ".join(broken(lambda j: j["spec"]["template"]["spec"].update(restartPolicy="OnFailure")))
    assert "imagePullPolicy" in broken(lambda j: j["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy="Sometimes"))[0]
    assert "plain text" in broken(lambda j: manifests.set_env(j, "HF_TOKEN", "hf_abc"))[0]
    assert "not a valid label value" in broken(lambda j: j["metadata"]["labels"].update({"x": "-bad-"}))[0]


def test_bad_input_exit_code_is_the_entry_points(world):
    _, _, docs = render(world)
    rule = job_of(docs["eval.yaml"])["spec"]["podFailurePolicy"]["rules"][1]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"]["values"] == [EXIT_USAGE]
    # The entry point exits EXIT_USAGE for GrailError/ConfigError (bad command line, stage or index,
    # plan changed); a DataError (a missing or bad input file: possibly a slow shared file system)
    # exits 1 and keeps its retry.
    assert GrailError("x").exit_code == ConfigError("x").exit_code == EXIT_USAGE == 2
    assert DataError("x").exit_code == 1
    out = subprocess.run([sys.executable, "-m", "grail_cluster.entry", "eval", "--run-dir", str(world / "nope"),
                          "--index", "0"], capture_output=True, text=True)
    assert out.returncode == 1  # no plan.json: a DataError
    preemption = job_of(docs["eval.yaml"])["spec"]["podFailurePolicy"]["rules"][0]
    assert preemption == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def _index_mapping(script: str, k: int, table: str) -> subprocess.CompletedProcess:
    head = script.split("export GRAIL_INDEX\n", 1)[0] + "export GRAIL_INDEX\necho \"$GRAIL_INDEX\"\n"
    return subprocess.run(["bash", "-c", head], env={"JOB_COMPLETION_INDEX": str(k), "GRAIL_INDEX_TABLE": table},
                          capture_output=True, text=True)


def test_the_pod_reads_its_shard_through_the_index_table(world):
    _, _, docs = render(world)
    script = job_of(docs["eval.yaml"])["spec"]["template"]["spec"]["containers"][0]["args"][0]
    table = "1,4-6,9"
    got = [_index_mapping(script, k, table).stdout.strip() for k in range(5)]
    assert got == ["1", "4", "5", "6", "9"] == [str(i) for i in k8s_names.parse_ranges(table)]
    outside = _index_mapping(script, 5, table)
    assert outside.returncode == EXIT_USAGE and "outside GRAIL_INDEX_TABLE" in outside.stderr
    assert _index_mapping(script, 7, "0-7").stdout.strip() == "7"


def test_a_resubmit_copy_carries_only_its_shards(world):
    plan, _, docs = render(world, "cluster.array_parallelism=3", "cluster.max_failed_indexes=5")
    eval_docs = docs["eval.yaml"]
    # Round 0, every shard: the rendered file is exactly what is created.
    assert manifests.retarget(eval_docs, name="kr-eval", indices=list(range(8)), round_=0) == eval_docs
    copy = job_of(manifests.retarget(eval_docs, name="kr-eval-r1", indices=[3, 7], round_=1))
    env = env_of(copy)
    assert copy["metadata"]["name"] == "kr-eval-r1" and copy["metadata"]["labels"]["grail-cluster/round"] == "1"
    assert copy["spec"]["completions"] == 2 and copy["spec"]["parallelism"] == 2 and copy["spec"]["maxFailedIndexes"] == 2
    assert env["GRAIL_INDEX_TABLE"]["value"] == "3,7" == copy["metadata"]["annotations"]["grail-cluster/indices"]
    assert env["GRAIL_ATTEMPT"]["value"] == "1"
    assert job_of(eval_docs)["spec"]["completions"] == 8  # the rendered file is untouched


def test_kueue_label_and_suspend_on_jobs_only(world):
    _, _, docs = render(world, "cluster.queue=gpu-queue")
    for stage in ("train", "eval", "web"):
        job = job_of(docs[f"{stage}.yaml"])
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue" and job["spec"]["suspend"] is True
        # Kueue manages the Job; a queue label on its pods would make Kueue gate each pod again.
        assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    driver = job_of(docs["driver.yaml"])
    assert "kueue.x-k8s.io/queue-name" not in driver["metadata"]["labels"] and "suspend" not in driver["spec"]
    _, _, plain = render(world)
    assert "suspend" not in job_of(plain["eval.yaml"])["spec"]


def test_secrets_only_through_secret_key_ref(world):
    _, files, docs = render(world, "+cluster.secret_env.WANDB_API_KEY={secret:wandb,key:api-key}")
    for stage in ("train", "eval"):
        ref = env_of(job_of(docs[f"{stage}.yaml"]))["WANDB_API_KEY"]
        assert ref == {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}
    assert not any("api-key-value" in text for text in files.values())
    with pytest.raises(ConfigError, match="WANDB_API_KEY would be written into the Job manifest"):
        render(world, "+job.env.WANDB_API_KEY=abc123")
    with pytest.raises(ConfigError, match="secret_env.HF_TOKEN"):
        render(world, "+cluster.secret_env.HF_TOKEN=oops")


def test_image_pull_secrets_node_selectors_and_gpu_placement(world):
    _, _, docs = render(world, "cluster.image_pull_secrets=[regcred]", "+cluster.node_selector.pool=grail",
                        "+cluster.gpu_node_selector.gpu=h100",
                        "cluster.gpu_tolerations=[{key:nvidia.com/gpu,operator:Exists,effect:NoSchedule}]",
                        "resources.eval.gpus=1")
    train, eval_, merge = (job_of(docs[f"{s}.yaml"])["spec"]["template"]["spec"] for s in ("train", "eval", "merge"))
    assert train["imagePullSecrets"] == [{"name": "regcred"}] == merge["imagePullSecrets"]
    assert train["nodeSelector"] == {"pool": "grail", "gpu": "h100"} == eval_["nodeSelector"]
    assert merge["nodeSelector"] == {"pool": "grail"} and "tolerations" not in merge
    assert eval_["tolerations"][0]["key"] == "nvidia.com/gpu"
    resources = train["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "8"
    assert eval_["activeDeadlineSeconds"] > 0
    volumes = {v["name"]: v for v in merge["volumes"]}
    assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == "grail-data"


def test_multinode_training_rendezvous_at_pod_0(world):
    plan, files, docs = render(world, "train.nodes=3", pipeline="terrain_tracking", lib="terrain")
    svc = next(d for d in docs["train.yaml"] if d["kind"] == "Service")
    job = job_of(docs["train.yaml"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"job-name": job["metadata"]["name"]} == {"job-name": "kr-train"}
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3 and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["subdomain"] == "kr-train"
    env = env_of(job)
    assert "job-completion-index" in env["GRAIL_MACHINE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["GRAIL_MASTER_ADDR"]["value"] == "kr-train-0.kr-train.default.svc"
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "export GRAIL_INDEX=0" in script
    assert '--num_machines=3 --num_processes=24 "--machine_rank=$GRAIL_MACHINE_RANK" ' \
           '"--main_process_ip=$GRAIL_MASTER_ADDR"' in script
    # A resubmitted training renames the Service, the subdomain and pod 0's host together.
    copy = manifests.retarget(docs["train.yaml"], name="kr-train-r1", indices=[0], round_=1)
    assert next(d for d in copy if d["kind"] == "Service")["spec"]["selector"] == {"job-name": "kr-train-r1"}
    assert env_of(job_of(copy))["GRAIL_MASTER_ADDR"]["value"] == "kr-train-r1-0.kr-train-r1.default.svc"
    assert job_of(copy)["spec"]["completions"] == 3


def test_driver_rbac_is_least_privilege(world):
    plan, _, docs = render(world)
    kinds = [d["kind"] for d in docs["driver.yaml"]]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "Job"]
    role = docs["driver.yaml"][1]
    verbs = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert verbs == {(("batch",), ("jobs",)): {"get", "list", "watch", "create"},
                     (("",), ("services",)): {"get", "list", "create"}, (("",), ("pods",)): {"get", "list"}}
    binding = docs["driver.yaml"][2]
    assert binding["subjects"][0]["name"] == role["metadata"]["name"] == "grail-cluster-driver"
    job = docs["driver.yaml"][3]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "grail-cluster-driver"
    assert f"-m grail_cluster drive {plan.run_dir} --round \"$GRAIL_DRIVE_ROUND\"" in pod["containers"][0]["args"][0]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "grail-data"
    rule = job["spec"]["podFailurePolicy"]["rules"][1]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [EXIT_USAGE, k8s_names.DRIVER_FINISHED_WITH_FAILURES]
    _, _, no_rbac = render(world, "cluster.driver.create_rbac=false")
    assert [d["kind"] for d in no_rbac["driver.yaml"]] == ["Job"]


def test_manifests_stay_small_whatever_the_library(world, tmp_path):
    make_library(tmp_path / "big", 400, fast=True)
    c = config.load(["pipeline=advanced_manip_table", "cluster=kubernetes", "cluster.image=r/g:1",
                     f"data.motion_lib={tmp_path / 'big'}", f"sonic.root={world / 'SONIC'}", f"run.root={tmp_path / 'runs'}",
                     "run.id=big", "eval.num_shards=50", "select.k=2"])
    plan = build_plan(c, scan_library(c["data"]["motion_lib"]))
    files = render_files(plan)
    keys = [k for s in plan.eval["shards"] for k in s["motion_keys"]]
    assert len(keys) == 400
    for rel, text in files.items():
        if rel.endswith(".yaml"):
            # Per-shard key lists stay in plan.json on the volume (etcd's request limit is ~1.5 MiB).
            assert len(text.encode()) < 16_384 and not any(k in text for k in keys[:50]), rel


def test_names_are_dns_labels_and_distinct_per_round():
    assert k8s_names.k8s_name("7run", "eval") == "g-7run-eval"  # Services need a leading letter
    long = "pnp_table-" + "x" * 80
    names = {k8s_names.job_name(long, "eval", 0, r) for r in range(5)} | {k8s_names.driver_name(long, r) for r in range(5)}
    assert len(names) == 10
    for name in names:
        assert lint.DNS_LABEL.fullmatch(name) and len(name) <= 57 and name[0].isalpha()
    assert k8s_names.job_name("run", "export", 1, 2) == "run-export-c1-r2"


def test_submission_is_refused_without_a_shared_volume(world, tmp_path):
    from grail_cluster.backends.kubernetes.client import KubernetesBackend

    plan, _, _ = render(world)

    def with_pvc(pvc):  # a plan as planned with this cluster.pvc (plans are not edited after planning)
        return dataclasses.replace(plan, config={**plan.config, "cluster": {**plan.config["cluster"], "pvc": pvc}})

    with pytest.raises(GrailError, match="cluster.pvc is not set"):
        KubernetesBackend(api_client=object()).prepare(with_pvc(None), ["eval"])
    with pytest.raises(GrailError, match="not under cluster.mount_path=/workspace"):
        KubernetesBackend(api_client=object()).prepare(with_pvc("grail-data"), ["eval"])


# ----------------------------------------------------------------------------- Job status -> shard states


def pod(k: int, phase: str, *, exit_code: int | None = None, reason: str | None = None, pod_reason: str | None = None,
        waiting: str | None = None, created: str = "2026-01-01T00:00:00Z") -> dict:
    state = {"running": {}} if exit_code is None else {"terminated": {"exitCode": exit_code, "reason": reason,
                                                                       "finishedAt": "2026-01-01T00:01:40Z"}}
    if waiting:
        state = {"waiting": {"reason": waiting}}
    return {"metadata": {"name": f"p{k}", "creationTimestamp": created,
                         "labels": {"batch.kubernetes.io/job-completion-index": str(k)}},
            "spec": {"nodeName": "gpu-7"},
            "status": {"phase": phase, "reason": pod_reason, "startTime": "2026-01-01T00:00:00Z",
                       "containerStatuses": [{"name": "main", "state": state}]}}


def test_index_states_from_completed_and_failed_indexes():
    job = {"metadata": {"annotations": {"grail-cluster/indices": "2,5-8,11", "grail-cluster/multinode": "false"}},
           "spec": {"completions": 6},
           "status": {"completedIndexes": "0,2", "failedIndexes": "1,3,4"}}
    pods = [pod(1, "Failed", exit_code=137, reason="OOMKilled"), pod(3, "Failed", pod_reason="DeadlineExceeded", exit_code=143),
            pod(4, "Failed", exit_code=1, reason="Error", created="2026-01-01T00:00:00Z"),
            pod(4, "Failed", exit_code=2, reason="Error", created="2026-01-01T00:05:00Z"),
            pod(5, "Pending", waiting="ImagePullBackOff"), pod(0, "Succeeded", exit_code=0)]
    got = k8s_states.shard_states(job, pods)
    assert {i: t.state for i, t in got.items()} == {2: "completed", 5: "out-of-memory", 6: "completed", 7: "timeout",
                                                    8: "failed", 11: "pending"}
    assert got[8].exit_code == "2:0"  # the newest pod of the index decides
    assert got[11].sched_state == "ImagePullBackOff" and got[2].node == "gpu-7" and got[2].elapsed == 100.0
    job["status"]["conditions"] = [{"type": "Failed", "status": "True", "reason": "MaxFailedIndexesExceeded"}]
    assert k8s_states.shard_states(job, pods)[11].state == "cancelled"  # stopped because others failed
    job["status"] = {}
    job["spec"]["suspend"] = True
    assert {t.sched_state for t in k8s_states.shard_states(job, []).values()} == {"Suspended"}


def test_multinode_training_is_one_shard():
    job = {"metadata": {"annotations": {"grail-cluster/indices": "0", "grail-cluster/multinode": "true"}},
           "spec": {"completions": 3}, "status": {"completedIndexes": "0,2"}}
    assert k8s_states.shard_states(job, [pod(1, "Running")])[0].state == "running"
    job["status"] = {"completedIndexes": "0,2", "failedIndexes": "1",
                     "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    assert k8s_states.shard_states(job, [pod(1, "Failed", exit_code=1)])[0].state == "failed"
    job["status"] = {"completedIndexes": "0-2", "conditions": [{"type": "Complete", "status": "True"}]}
    assert k8s_states.shard_states(job, [])[0].state == "completed"
