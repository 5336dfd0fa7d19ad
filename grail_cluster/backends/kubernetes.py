"""Kubernetes: render one Indexed Job per stage; submit, follow, cancel them through the official client.

Rendering (pure): a stage is an Indexed Job whose completion index k runs shard ``GRAIL_INDEX_TABLE[k]``
(the table is ``0-(N-1)`` for a first run and only the chosen shards for a resubmit); per-shard data
stays in plan.json on the shared volume, never in the Job (etcd's request size limit). Multi-node
training is an Indexed Job with one pod per node behind a headless Service, so pod 0 has a stable DNS
name for ``accelerate launch``'s rendezvous. ``driver.yaml`` holds the driver Job and its RBAC.

Submission: ``run`` records every stage in the ledger and starts the driver Job; the driver (module
``grail_cluster.backends.kubernetes_driver``, in the cluster) creates each stage's Job when the Jobs it depends on have
finished, so nothing has to stay up on the submitting machine. Jobs are named deterministically
(``<run>-<stage>[-c<chunk>][-r<round>]``): a restarted driver adopts what already exists.

Status: two list calls per refresh whatever the shard count (the run's Jobs, the run's pods), read
from ``status.completedIndexes`` / ``failedIndexes``, the Job conditions and the pods; markers decide
"done" as everywhere else. While a driver Job of the run is active it is the only writer of the
ledger: a refresh from another machine then reads the ledger without writing (``reconcile``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from grail_cluster.core.errors import EXIT_USAGE, ConfigError, GrailError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.plan import RunPlan
from grail_cluster.core.states import ACTIVE
from grail_cluster.runs.submission import compress_ranges

MAX_NAME = 63
MAX_COMPLETIONS = 100_000  # the API's limit for Indexed Jobs (completions and parallelism)
DRIVER_FINISHED_WITH_FAILURES = 3  # the driver's exit code when every stage settled but some shard failed

LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_RUN = "grail-cluster/run"
LABEL_STAGE = "grail-cluster/stage"
LABEL_ROLE = "grail-cluster/role"  # stage | driver
LABEL_ROUND = "grail-cluster/round"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
ANN_RUN_ID = "grail-cluster/run-id"
ANN_PLAN_HASH = "grail-cluster/plan-hash"
ANN_DEPENDS = "grail-cluster/depends-on"
ANN_INDICES = "grail-cluster/indices"  # the index table: completion index k -> shard indices[k]
ANN_MULTINODE = "grail-cluster/multinode"
ANN_CANCEL = "grail-cluster/cancel"  # on a driver Job: ledger job ids the driver must cancel, not create
ANN_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
ENUMS = {
    "completionMode": {"Indexed", "NonIndexed"},
    "podFailurePolicy.action": {"FailJob", "FailIndex", "Ignore", "Count"},
    "onExitCodes.operator": {"In", "NotIn"},
    "onPodConditions.status": {"True", "False", "Unknown"},
    "restartPolicy": {"Never", "OnFailure", "Always"},
    "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "Role.verbs": {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "*"},
}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# Names that hold credentials must come from a Secret, never from plain env in the manifest.
SECRET_NAME = re.compile(r"API_?KEY|TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL", re.I)


# ----------------------------------------------------------------------------- names and tables


def k8s_name(run_id: str, stage: str) -> str:
    """A DNS-1035 label ``<run>-<stage>`` (Services need a leading letter); long run ids keep a hash."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"{run_id}-{stage}".lower()).strip("-")
    if not base[:1].isalpha():
        base = f"g-{base}"
    room = MAX_NAME - 6  # pods' host names are "<job>-<index>" (index < 100000): 57 characters at most
    if len(base) <= room:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[: room - 15].rstrip('-')}-{digest}-{stage[:5].strip('-')}".strip("-")


def job_name(run_id: str, stage: str, chunk: int = 0, round_: int = 0) -> str:
    return k8s_name(run_id, stage + (f"-c{chunk}" if chunk else "") + (f"-r{round_}" if round_ else ""))


def driver_name(run_id: str, round_: int = 0) -> str:
    return k8s_name(run_id, "drive" + (f"-r{round_}" if round_ else ""))


def run_label(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)[:63].strip("-_.")


def parse_ranges(text: str | None) -> list[int]:
    """Kubernetes' (and our table's) compressed ranges: ``"1,3-5,7"`` -> [1, 3, 4, 5, 7]."""
    out: list[int] = []
    for part in filter(None, (text or "").replace(" ", "").split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise GrailError("rendered manifest missing", path=path,
                         fix="re-run `grail-cluster run ... cluster=kubernetes` to render it") from None
    return [d for d in yaml.safe_load_all(text) if d]


# ----------------------------------------------------------------------------- rendering (pure)


def _quantities(spec: JobSpec, gpu_resource: str) -> tuple[dict[str, str], dict[str, str]]:
    r = spec.resources
    requests = {"cpu": str(r.cpus), "memory": f"{math.ceil(r.mem_gb)}Gi"}
    limits = {"memory": f"{math.ceil(r.mem_gb)}Gi"}
    if r.gpus:
        requests[gpu_resource] = str(r.gpus)
        limits[gpu_resource] = str(r.gpus)
    return requests, limits


def _secret_env(cluster: dict[str, Any], spec: JobSpec) -> list[tuple[str, dict[str, str]]]:
    """``cluster.secret_env`` as (name, {secret, key}); refuses credentials in plain env."""
    plain = sorted(k for k in spec.env if SECRET_NAME.search(k))
    if plain:
        raise ConfigError(
            f"{plain[0]} would be written into the Job manifest in plain text (job.env / sonic.env)",
            fix=f"store it in a Secret and pass `+cluster.secret_env.{plain[0]}={{secret:NAME,key:KEY}}` instead")
    out = []
    for name, ref in sorted((cluster.get("secret_env") or {}).items()):
        if not isinstance(ref, dict) or not ref.get("secret") or not ref.get("key"):
            raise ConfigError(f"cluster.secret_env.{name} must be {{secret: <Secret name>, key: <key>}}, got {ref!r}",
                              fix=f"+cluster.secret_env.{name}={{secret:wandb,key:api-key}}")
        out.append((str(name), {"secret": str(ref["secret"]), "key": str(ref["key"])}))
    return out


def _volumes(cluster: dict[str, Any], shm: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    mounts, volumes = [], []
    if cluster.get("pvc"):
        mounts.append({"name": "workspace", "mountPath": cluster["mount_path"]})
        volumes.append({"name": "workspace", "persistentVolumeClaim": {"claimName": cluster["pvc"]}})
    if shm:
        # Isaac Lab and NCCL need more shared memory than the container default (64 MiB).
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    return mounts, volumes


def base_labels(plan: RunPlan, role: str) -> dict[str, str]:
    return {LABEL_MANAGED: "grail-cluster", LABEL_RUN: run_label(plan.run_id), LABEL_ROLE: role, LABEL_ROUND: "0"}


def render_manifest(plan: RunPlan, spec: JobSpec, env: jinja2.Environment) -> str:
    cluster = plan.config["cluster"]
    name = job_name(plan.run_id, spec.stage)
    # Pods carry the run/stage labels (status lists them by label); only the Job carries Kueue's.
    labels = {**base_labels(plan, "stage"), LABEL_STAGE: spec.stage}
    job_labels = dict(labels)
    if cluster.get("queue"):
        job_labels[LABEL_QUEUE] = cluster["queue"]
    table = compress_ranges(list(range(spec.size)))
    annotations = {
        ANN_RUN_ID: plan.run_id,
        ANN_PLAN_HASH: plan.plan_hash,
        ANN_DEPENDS: ",".join(f"{d.kind}:{d.stage}" for d in spec.depends_on),
        ANN_INDICES: table,
        ANN_MULTINODE: "true" if spec.multinode else "false",
    }
    port = int(plan.config["train"].get("master_port") or 29500)
    script = env.get_template("kubernetes/script.sh.j2").render(spec=spec, bad_input_exit_code=EXIT_USAGE)
    requests, limits = _quantities(spec, cluster["gpu_resource"])
    mounts, volumes = _volumes(cluster, shm=spec.stage in ("train", "eval"))
    completions = spec.resources.nodes if spec.multinode else spec.size
    parallelism = completions if spec.multinode else min(spec.size, int(cluster.get("array_parallelism") or spec.size))
    max_failed = cluster.get("max_failed_indexes")
    node_selector = dict(cluster.get("node_selector") or {})
    tolerations = list(cluster.get("tolerations") or [])
    if spec.resources.gpus:
        node_selector.update(cluster.get("gpu_node_selector") or {})
        tolerations += list(cluster.get("gpu_tolerations") or [])
    return env.get_template("kubernetes/job.yaml.j2").render(
        spec=spec, cluster=cluster, name=name, labels=labels, job_labels=job_labels, annotations=annotations,
        script=script, requests=requests, limits=limits, volume_mounts=mounts, volumes=volumes,
        completions=completions, parallelism=parallelism, master_port=port, table=table,
        max_failed_indexes=None if max_failed is None else min(int(max_failed), completions),
        master_addr=f"{name}-0.{name}.{cluster['namespace']}.svc", bad_input_exit_code=EXIT_USAGE,
        active_deadline=int(spec.resources.time_min) * 60, secret_env=_secret_env(cluster, spec),
        pull_secrets=[{"name": s} for s in cluster.get("image_pull_secrets") or []],
        node_selector=node_selector, tolerations=tolerations,
    )


def render_driver(plan: RunPlan, env: jinja2.Environment) -> str:
    from grail_cluster.sonic.commands import shell_join

    cluster = plan.config["cluster"]
    driver = cluster["driver"]
    name = driver_name(plan.run_id)
    mounts, volumes = _volumes(cluster, shm=False)
    return env.get_template("kubernetes/driver.yaml.j2").render(
        plan=plan, cluster=cluster, driver=driver, name=name,
        labels=base_labels(plan, "driver"), rbac_labels={LABEL_MANAGED: "grail-cluster"},
        annotations={ANN_RUN_ID: plan.run_id, ANN_PLAN_HASH: plan.plan_hash},
        command=shell_join([plan.config["job"]["python"], "-m", "grail_cluster", "drive", plan.run_dir]),
        setup=list(plan.config["job"].get("setup") or []), log_dir=os.path.join(plan.paths["logs_dir"], "drive"),
        requests={"cpu": str(driver["cpu"]), "memory": str(driver["memory"])}, limits={"memory": str(driver["memory"])},
        volume_mounts=mounts, volumes=volumes, bad_input_exit_code=EXIT_USAGE,
        finished_with_failures=DRIVER_FINISHED_WITH_FAILURES,
        pull_secrets=[{"name": s} for s in cluster.get("image_pull_secrets") or []],
    )


def render(plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
    files = {f"{spec.stage}.yaml": render_manifest(plan, spec, env) for spec in specs}
    files["driver.yaml"] = render_driver(plan, env)
    return files


# ----------------------------------------------------------------------------- per-submission copies (pure)


def _env_list(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"][0].setdefault("env", [])


def _set_env(doc: dict[str, Any], name: str, value: str) -> None:
    env = _env_list(doc)
    for item in env:
        if item["name"] == name:
            item.pop("valueFrom", None)
            item["value"] = value
            return
    env.append({"name": name, "value": value})


def retarget(docs: list[dict[str, Any]], *, name: str, indices: list[int], round_: int) -> list[dict[str, Any]]:
    """The rendered stage objects as submitted for one ledger job: its name, its shards (the index
    table; completions shrink to their number) and its attempt. For a first run's full stage this
    changes nothing but the name (the same for chunk 0 of round 0)."""
    docs = copy.deepcopy(docs)
    job = next(d for d in docs if d["kind"] == "Job")
    namespace = job["metadata"].get("namespace", "default")
    multinode = job["metadata"]["annotations"].get(ANN_MULTINODE) == "true"
    table = compress_ranges(indices)
    for d in docs:
        d["metadata"]["name"] = name
        d["metadata"].setdefault("labels", {})[LABEL_ROUND] = str(round_)
        d["metadata"].setdefault("annotations", {})[ANN_INDICES] = table
    spec = job["spec"]
    if not multinode:
        spec["completions"] = len(indices)
        spec["parallelism"] = max(1, min(int(spec.get("parallelism") or 1), len(indices)))
        if spec.get("maxFailedIndexes") is not None:
            spec["maxFailedIndexes"] = min(int(spec["maxFailedIndexes"]), len(indices))
    pod = spec["template"]
    pod["metadata"].setdefault("labels", {})[LABEL_ROUND] = str(round_)
    _set_env(job, "GRAIL_INDEX_TABLE", table)
    _set_env(job, "GRAIL_ATTEMPT", str(round_))
    if multinode:
        pod["spec"]["subdomain"] = name
        _set_env(job, "GRAIL_MASTER_ADDR", f"{name}-0.{name}.{namespace}.svc")
        for d in docs:
            if d["kind"] == "Service":
                d["spec"]["selector"] = {"job-name": name}
    return docs


def driver_objects(docs: list[dict[str, Any]], *, name: str, round_: int) -> tuple[list[dict], dict]:
    """(RBAC objects, the driver Job of ``round_``) from the rendered driver.yaml."""
    rbac = [copy.deepcopy(d) for d in docs if d["kind"] != "Job"]
    job = copy.deepcopy(next(d for d in docs if d["kind"] == "Job"))
    job["metadata"]["name"] = name
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        meta.setdefault("labels", {})[LABEL_ROUND] = str(round_)
    _set_env(job, "GRAIL_DRIVE_ROUND", str(round_))
    return rbac, job


# ----------------------------------------------------------------------------- the project's own checks


def lint_manifest(doc: dict[str, Any], *, stage_size: int | None = None) -> list[str]:
    """What the OpenAPI schemas do not check: enum values, index ranges, field combinations the API
    server would refuse, and our own contract (the index table matches completions)."""
    problems: list[str] = []
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    name = meta.get("name") or ""
    where = f"{kind} {name}"
    limit = MAX_NAME if kind != "Job" else MAX_NAME - 6  # pods' host names are <job>-<index>
    if not DNS_LABEL.fullmatch(name) or len(name) > limit:
        problems.append(f"{where}: name must be a DNS label of at most {limit} characters")
    if kind == "Service" and not name[:1].isalpha():
        problems.append(f"{where}: Service names must start with a letter")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            problems.append(f"{where}: label {key}={value!r} is not a valid label value")
    if kind == "Role":
        for rule in doc.get("rules") or []:
            bad = set(rule.get("verbs") or []) - ENUMS["Role.verbs"]
            if bad:
                problems.append(f"{where}: unknown verbs {sorted(bad)}")
    if kind != "Job":
        return problems
    spec = doc.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    mode = spec.get("completionMode", "NonIndexed")
    indexed = mode == "Indexed"
    if mode not in ENUMS["completionMode"]:
        problems.append(f"{where}: completionMode {mode!r} is not one of {sorted(ENUMS['completionMode'])}")
    role = (meta.get("labels") or {}).get(LABEL_ROLE)
    if role == "stage" and not indexed:
        problems.append(f"{where}: a stage Job must be completionMode Indexed (the completion index picks the shard)")
    completions = spec.get("completions")
    parallelism = spec.get("parallelism")
    if indexed:
        if not isinstance(completions, int) or not 1 <= completions <= MAX_COMPLETIONS:
            problems.append(f"{where}: completions must be 1..{MAX_COMPLETIONS} for an Indexed Job, got {completions!r}")
        if not isinstance(parallelism, int) or not 0 <= parallelism <= min(completions or 0, MAX_COMPLETIONS):
            problems.append(f"{where}: parallelism must be 0..completions, got {parallelism!r}")
    if "backoffLimitPerIndex" in spec:
        if not indexed:
            problems.append(f"{where}: backoffLimitPerIndex needs completionMode Indexed")
        if not isinstance(spec["backoffLimitPerIndex"], int) or spec["backoffLimitPerIndex"] < 0:
            problems.append(f"{where}: backoffLimitPerIndex must be >= 0")
    if spec.get("maxFailedIndexes") is not None:
        if "backoffLimitPerIndex" not in spec:
            problems.append(f"{where}: maxFailedIndexes needs backoffLimitPerIndex")
        elif isinstance(completions, int) and not 0 <= spec["maxFailedIndexes"] <= completions:
            problems.append(f"{where}: maxFailedIndexes must be 0..completions")
    policy = spec.get("podFailurePolicy")
    if policy is not None and pod.get("restartPolicy") != "Never":
        problems.append(f"{where}: podFailurePolicy needs the pod restartPolicy Never")
    if pod.get("restartPolicy") not in ENUMS["restartPolicy"] - {"Always"}:
        problems.append(f"{where}: a Job's pods must have restartPolicy Never or OnFailure")
    containers = {c.get("name") for c in pod.get("containers") or []}
    for rule in (policy or {}).get("rules") or []:
        action = rule.get("action")
        if action not in ENUMS["podFailurePolicy.action"]:
            problems.append(f"{where}: podFailurePolicy action {action!r} is not one of {sorted(ENUMS['podFailurePolicy.action'])}")
        if action == "FailIndex" and "backoffLimitPerIndex" not in spec:
            problems.append(f"{where}: the FailIndex action needs backoffLimitPerIndex")
        codes = rule.get("onExitCodes")
        if codes:
            if codes.get("operator") not in ENUMS["onExitCodes.operator"]:
                problems.append(f"{where}: onExitCodes operator {codes.get('operator')!r} is not In or NotIn")
            values = codes.get("values") or []
            if len(set(values)) != len(values) or any(not isinstance(v, int) or not 0 <= v <= 255 for v in values):
                problems.append(f"{where}: onExitCodes values must be distinct exit codes 0..255")
            if codes.get("operator") == "In" and 0 in values:
                problems.append(f"{where}: onExitCodes with operator In must not list 0")
            if codes.get("containerName") and codes["containerName"] not in containers:
                problems.append(f"{where}: onExitCodes names container {codes['containerName']!r}, which the pod lacks")
        for cond in rule.get("onPodConditions") or []:
            if cond.get("status") not in ENUMS["onPodConditions.status"]:
                problems.append(f"{where}: onPodConditions status {cond.get('status')!r} is not True, False or Unknown")
        if bool(codes) == bool(rule.get("onPodConditions")):
            problems.append(f"{where}: a podFailurePolicy rule needs exactly one of onExitCodes, onPodConditions")
    for c in pod.get("containers") or []:
        if c.get("imagePullPolicy") not in ENUMS["imagePullPolicy"]:
            problems.append(f"{where}: imagePullPolicy {c.get('imagePullPolicy')!r} is not one of {sorted(ENUMS['imagePullPolicy'])}")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None and (not ref.get("name") or not ref.get("key")):
                problems.append(f"{where}: env {e.get('name')} secretKeyRef needs name and key")
            if "value" in e and SECRET_NAME.search(e.get("name", "")):
                problems.append(f"{where}: env {e['name']} holds a credential in plain text; use secretKeyRef")
    if role == "stage":
        problems += _lint_table(doc, where, completions, stage_size)
    return problems


def _lint_table(doc: dict[str, Any], where: str, completions: Any, stage_size: int | None) -> list[str]:
    problems = []
    ann = (doc.get("metadata") or {}).get("annotations") or {}
    env = {e["name"]: e.get("value") for e in _env_list(doc) if "name" in e}
    table_text = env.get("GRAIL_INDEX_TABLE")
    if table_text is None:
        return [f"{where}: no GRAIL_INDEX_TABLE env (completion index -> shard)"]
    try:
        table = parse_ranges(table_text)
    except ValueError:
        return [f"{where}: GRAIL_INDEX_TABLE {table_text!r} is not a list of ranges"]
    if ann.get(ANN_INDICES) != table_text:
        problems.append(f"{where}: annotation {ANN_INDICES} differs from GRAIL_INDEX_TABLE")
    if table != sorted(set(table)):
        problems.append(f"{where}: GRAIL_INDEX_TABLE must list distinct shards in increasing order")
    multinode = ann.get(ANN_MULTINODE) == "true"
    if multinode and table != [0]:
        problems.append(f"{where}: multi-node training is stage index 0 only")
    if not multinode and completions != len(table):
        problems.append(f"{where}: completions {completions} but GRAIL_INDEX_TABLE lists {len(table)} shard(s)")
    if stage_size is not None and table and not (0 <= table[0] and table[-1] < stage_size):
        problems.append(f"{where}: GRAIL_INDEX_TABLE {table_text} leaves the stage's indices 0..{stage_size - 1}")
    return problems


# ----------------------------------------------------------------------------- states from the API (pure)


@dataclass(frozen=True)
class TaskInfo:
    state: str  # shard-level: pending | running | completed | failed | cancelled | timeout | out-of-memory
    sched_state: str
    exit_code: str | None = None
    elapsed: float | None = None
    node: str | None = None


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_index(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    value = (meta.get("labels") or {}).get(ANN_COMPLETION_INDEX) or (meta.get("annotations") or {}).get(ANN_COMPLETION_INDEX)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _main_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for s in statuses:
        if s.get("name") in ("main", "driver"):
            return s
    return statuses[0] if statuses else {}


def pod_outcome(pod: dict[str, Any] | None) -> tuple[str, str, str | None, float | None, str | None]:
    """(state, scheduler word, exit code, elapsed, node) of one pod."""
    if pod is None:
        return "pending", "Pending", None, None, None
    st = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName")
    cs = _main_status(pod)
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    started = _ts(st.get("startTime"))
    finished = _ts(term.get("finishedAt"))
    elapsed = finished - started if started and finished else None
    exit_code = f"{term['exitCode']}:0" if term.get("exitCode") is not None else None
    phase = st.get("phase") or "Pending"
    if phase == "Failed" or term.get("exitCode"):
        if term.get("reason") == "OOMKilled":
            return "out-of-memory", "OOMKilled", exit_code, elapsed, node
        if st.get("reason") == "DeadlineExceeded":
            return "timeout", "DeadlineExceeded", exit_code, elapsed, node
        if st.get("reason") == "Evicted":
            return "node-fail", "Evicted", exit_code, elapsed, node
        return "failed", term.get("reason") or "Failed", exit_code, elapsed, node
    if phase == "Succeeded":
        return "completed", "Succeeded", exit_code or "0:0", elapsed, node
    if phase == "Running":
        return "running", "Running", None, time.time() - started if started else None, node
    waiting = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
    return "pending", waiting or "Pending", None, None, node


def index_states(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[int, TaskInfo]:
    """Completion index -> state of one Indexed Job, from its status and its pods (newest per index)."""
    spec = job.get("spec") or {}
    st = job.get("status") or {}
    completions = int(spec.get("completions") or 1)
    completed = set(parse_ranges(st.get("completedIndexes")))
    failed = set(parse_ranges(st.get("failedIndexes")))
    conditions = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    job_failed = conditions.get("Failed") or conditions.get("FailureTarget")
    job_complete = conditions.get("Complete") or conditions.get("SuccessCriteriaMet")
    newest: dict[int, dict[str, Any]] = {}
    for pod in pods:
        k = pod_index(pod)
        if k is None:
            continue
        created = _ts((pod.get("metadata") or {}).get("creationTimestamp")) or 0.0
        if k not in newest or created >= (_ts((newest[k].get("metadata") or {}).get("creationTimestamp")) or 0.0):
            newest[k] = pod
    out: dict[int, TaskInfo] = {}
    for k in range(completions):
        state, sched, exit_code, elapsed, node = pod_outcome(newest.get(k))
        if k in completed or (job_complete and not failed):
            out[k] = TaskInfo("completed", "Succeeded", exit_code if state == "completed" else "0:0", elapsed, node)
        elif k in failed:
            if state not in ("failed", "timeout", "out-of-memory", "node-fail"):
                state, sched = "failed", "FailedIndex"
            out[k] = TaskInfo(state, sched, exit_code, elapsed, node)
        elif job_failed:
            reason = job_failed.get("reason") or "Failed"
            if reason == "DeadlineExceeded":
                out[k] = TaskInfo("timeout", reason, exit_code, elapsed, node)
            elif reason == "MaxFailedIndexesExceeded" or state not in ("failed", "timeout", "out-of-memory", "node-fail"):
                # Stopped because other shards failed, not by its own failure.
                out[k] = TaskInfo("cancelled", reason, exit_code, elapsed, node)
            else:
                out[k] = TaskInfo(state, reason, exit_code, elapsed, node)
        elif spec.get("suspend"):
            out[k] = TaskInfo("pending", "Suspended", None, None, None)
        elif state in ("running", "pending"):
            out[k] = TaskInfo(state, sched, None, elapsed, node)
        else:
            # The last pod failed but the index has retries left: the controller starts another.
            out[k] = TaskInfo("pending", f"Retrying ({sched})", exit_code, None, node)
    return out


def shard_states(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[int, TaskInfo]:
    """Shard index -> state, through the Job's index table (multi-node training is one shard: 0)."""
    ann = (job.get("metadata") or {}).get("annotations") or {}
    per_index = index_states(job, pods)
    if ann.get(ANN_MULTINODE) == "true":
        infos = list(per_index.values())
        for state in ("failed", "out-of-memory", "timeout", "node-fail", "cancelled", "running", "pending"):
            first = next((t for t in infos if t.state == state), None)
            if first:
                node = per_index.get(0, first).node
                return {0: TaskInfo(first.state, first.sched_state, first.exit_code, first.elapsed, node)}
        return {0: per_index.get(0) or TaskInfo("completed", "Succeeded", "0:0")}
    table = parse_ranges(ann.get(ANN_INDICES))
    return {table[k]: info for k, info in per_index.items() if k < len(table)}


def job_finished(job: dict[str, Any] | None) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


def parse_depends(depends: str | None) -> list[tuple[str, list[str]]]:
    """The ledger's dependency text (``afterok:<job>:<job>,aftercorr:<job>``; Kubernetes names hold no ':')."""
    out = []
    for part in filter(None, (depends or "").split(",")):
        kind, *ids = part.split(":")
        out.append((kind, ids))
    return out


# ----------------------------------------------------------------------------- the client side


@dataclass
class Snapshot:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage Jobs by name
    drivers: dict[str, dict[str, Any]] = field(default_factory=dict)  # driver Jobs by name
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # Job name -> its pods


def _api_error(exc: Exception, what: str, namespace: str) -> GrailError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", "") or ""
    body = getattr(exc, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    text = f"Kubernetes refused to {what}: {status} {reason}" + (f" ({message})" if message else "")
    if status in (401, 403):
        return GrailError(text, fix=f"your kubeconfig user (or the driver's service account) needs that right in namespace "
                                    f"{namespace}; see the Role in specs/kubernetes/driver.yaml")
    if status == 404:
        return GrailError(text, fix=f"check cluster.namespace={namespace} and that the API serves batch/v1 Jobs")
    if status == 422:
        return GrailError(text, fix="the API server rejected the manifest; check it with `grail-cluster run --dry-run`")
    return GrailError(text)


class KubernetesBackend:
    """Indexed Jobs through the official ``kubernetes`` client, chained in the cluster by the driver."""

    name = "kubernetes"

    def __init__(self, api_client: Any = None, *, driving: bool = False) -> None:
        self.calls: Counter[str] = Counter()
        self.driving = driving  # True inside `grail-cluster drive`: this process owns the ledger
        self.notes: list[str] = []
        self._api = api_client
        self._plan: RunPlan | None = None
        self._snap: Snapshot | None = None
        self._rows: dict[str, Any] = {}
        self.created_jobs: set[str] = set()

    # ------------------------------------------------------------------ client

    def _client(self, plan: RunPlan) -> Any:
        if self._api is not None:
            return self._api
        try:
            from kubernetes import client, config
        except ImportError:
            raise GrailError("the `kubernetes` Python package is not installed (needed for cluster=kubernetes)",
                             fix="pip install 'grail-cluster[kubernetes]'") from None
        cfg = client.Configuration()
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
                config.load_incluster_config(client_configuration=cfg)
            else:
                # Read KUBECONFIG now: the client reads it once, at import.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                        context=plan.config["cluster"].get("context"), client_configuration=cfg)
        except Exception as exc:  # ConfigException, missing files, bad YAML: all mean "no usable config"
            raise GrailError(f"cannot load a Kubernetes configuration for cluster=kubernetes: {exc}",
                             fix="point KUBECONFIG at your cluster's kubeconfig (or set cluster.context=NAME); "
                                 "inside a pod the service account is used") from None
        self._api = client.ApiClient(cfg)
        return self._api

    def _call(self, plan: RunPlan, what: str, api: str, method: str, *args: Any, ok: tuple[int, ...] = (),
              **kwargs: Any) -> Any:
        """One API call, decoded to plain dicts; statuses in ``ok`` return None instead of raising."""
        import urllib3
        from kubernetes import client

        namespace = plan.config["cluster"]["namespace"]
        apis = {"batch": client.BatchV1Api, "core": client.CoreV1Api, "rbac": client.RbacAuthorizationV1Api}
        fn = getattr(apis[api](self._client(plan)), method)
        self.calls[method] += 1
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=60, **kwargs)
        except client.exceptions.ApiException as exc:
            if exc.status in ok:
                return None
            raise _api_error(exc, what, namespace) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # connection refused, DNS, TLS, timeouts
            host = getattr(self._client(plan).configuration, "host", "?")
            raise GrailError(f"cannot reach the Kubernetes API at {host} to {what}: {type(exc).__name__}: "
                             f"{str(exc)[:200]}", fix="check the cluster is up and your kubeconfig/VPN") from None
        except ValueError as exc:  # the client validates bodies against its models (kubernetes >= 35)
            raise GrailError(f"the kubernetes client refused to {what}: {str(exc)[:400]}",
                             fix="check the rendered manifest (`grail-cluster run --dry-run`)") from None
        data = resp.data
        if method == "read_namespaced_pod_log":
            return data.decode(errors="replace")
        return json.loads(data) if data else {}

    def _ns(self, plan: RunPlan) -> str:
        return plan.config["cluster"]["namespace"]

    def _selector(self, plan: RunPlan) -> str:
        return f"{LABEL_RUN}={run_label(plan.run_id)}"

    def _ours(self, plan: RunPlan, obj: dict[str, Any]) -> bool:
        # The label selector narrows the listing; the run-id annotation settles truncated labels.
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        run_id = (meta.get("annotations") or {}).get(ANN_RUN_ID)
        return labels.get(LABEL_RUN) == run_label(plan.run_id) and run_id in (None, plan.run_id)

    def snapshot(self, plan: RunPlan, *, pods: bool = True) -> Snapshot:
        """The run's Jobs and pods: two list calls, whatever the shard count."""
        snap = Snapshot()
        listing = self._call(plan, "list Jobs", "batch", "list_namespaced_job", self._ns(plan),
                             label_selector=self._selector(plan))
        for job in listing.get("items") or []:
            if not self._ours(plan, job):
                continue
            meta = job["metadata"]
            role = (meta.get("labels") or {}).get(LABEL_ROLE)
            (snap.drivers if role == "driver" else snap.jobs)[meta["name"]] = job
        if pods:
            listing = self._call(plan, "list pods", "core", "list_namespaced_pod", self._ns(plan),
                                 label_selector=self._selector(plan))
            for pod in listing.get("items") or []:
                labels = (pod.get("metadata") or {}).get("labels") or {}
                owner = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
                if owner and (labels.get(LABEL_RUN) == run_label(plan.run_id)):
                    snap.pods.setdefault(owner, []).append(pod)
        self._snap = snap
        return snap

    # ------------------------------------------------------------------ submit

    def prepare(self, plan: RunPlan, stages: list[str]) -> None:
        """Everything that can fail before the ledger records a submission: config, files, API access, RBAC."""
        cluster = plan.config["cluster"]
        if not cluster.get("pvc"):
            raise GrailError("cluster.pvc is not set: the run dir, plan and markers must be on a volume every pod mounts",
                             fix="cluster.pvc=<PersistentVolumeClaim> cluster.mount_path=/workspace run.root=/workspace/runs")
        mount = os.path.normpath(cluster["mount_path"])
        if os.path.commonpath([mount, os.path.normpath(plan.run_dir)]) != mount:
            raise GrailError(f"run dir {plan.run_dir} is not under cluster.mount_path={mount}, so the pods would not see it",
                             fix=f"run.root={mount}/runs (mount the PVC at {mount} here too, or run from a pod that mounts it)")
        spec_dir = Path(plan.paths["specs_dir"]) / self.name
        for stage in sorted(set(stages)):
            for doc in load_manifests(spec_dir / f"{stage}.yaml"):
                problems = lint_manifest(doc, stage_size=plan.stage(stage).size)
                if problems:
                    raise GrailError(f"{stage}.yaml: {problems[0]}", path=spec_dir / f"{stage}.yaml",
                                     fix="re-render it (`grail-cluster run --dry-run`) and check the cluster settings")
        # One call proves the API answers; and a resubmit waits for the last round's driver to end,
        # so the ledger keeps one writer.
        active = self.driver_active(self.snapshot(plan, pods=False))
        if active:
            raise GrailError(f"driver Job {active[0]} of this run is still running (it owns the ledger)",
                             fix=f"wait until it ends (`grail-cluster watch {plan.run_dir}`), or cancel the run first")
        if cluster["driver"].get("create_rbac"):
            rbac, _ = driver_objects(load_manifests(spec_dir / "driver.yaml"), name=driver_name(plan.run_id), round_=0)
            for obj in rbac:
                self.create(plan, obj)

    def submit_group(self, plan: RunPlan, group: Any, *, name: str, dependency: str | None, attempt: int,
                     spec_dir: Path) -> str:
        """Nothing is created here: the driver creates the Job when its dependencies have finished."""
        return job_name(plan.run_id, group.stage, group.chunk, attempt)

    def start(self, plan: RunPlan, ledger: Ledger, round_: int) -> None:
        """Start the driver of this submission round (adopted if it exists already)."""
        spec_dir = Path(plan.paths["specs_dir"]) / self.name
        name = driver_name(plan.run_id, round_)
        _, job = driver_objects(load_manifests(spec_dir / "driver.yaml"), name=name, round_=round_)
        # Recorded before creating: if the creation fails, `status` can tell its shards were never created.
        ledger.set_meta(f"k8s_driver_r{round_}", {"name": name, "at": time.time()})
        _, created = self.create(plan, job)
        ledger.event("driver", None, None, round_, job_id=name, created=created)

    KINDS = {
        "Job": ("batch", "create_namespaced_job", "read_namespaced_job"),
        "Service": ("core", "create_namespaced_service", "read_namespaced_service"),
        "ServiceAccount": ("core", "create_namespaced_service_account", "read_namespaced_service_account"),
        "Role": ("rbac", "create_namespaced_role", "read_namespaced_role"),
        "RoleBinding": ("rbac", "create_namespaced_role_binding", "read_namespaced_role_binding"),
    }

    def create(self, plan: RunPlan, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``obj``, or adopt the one of that name (idempotent); (object, created)."""
        api, create, read = self.KINDS[obj["kind"]]
        name = obj["metadata"]["name"]
        made = self._call(plan, f"create {obj['kind']} {name}", api, create, self._ns(plan), obj, ok=(409,))
        if made is not None:
            return made, True
        existing = self._call(plan, f"read {obj['kind']} {name}", api, read, name, self._ns(plan))
        ann = (existing.get("metadata") or {}).get("annotations") or {}
        if obj["kind"] in ("Job", "Service") and ann.get(ANN_RUN_ID, plan.run_id) != plan.run_id:
            raise GrailError(f"{obj['kind']} {name} exists in namespace {self._ns(plan)} but belongs to run "
                             f"{ann.get(ANN_RUN_ID)}", fix="pick another run.id (names are derived from it)")
        return existing, False

    def create_stage_job(self, plan: RunPlan, row: Any, indices: list[int]) -> tuple[str, bool]:
        """The driver's creation of one ledger job: the rendered stage objects retargeted to its
        shards; Job first, then (multi-node) its Service, owned by the Job so they go together."""
        spec_dir = Path(plan.paths["specs_dir"]) / self.name
        docs = retarget(load_manifests(spec_dir / f"{row.stage}.yaml"), name=row.job_id, indices=indices,
                        round_=row.round)
        for doc in docs:
            problems = lint_manifest(doc, stage_size=plan.stage(row.stage).size)
            if problems:
                raise GrailError(f"refusing to create {row.job_id}: {problems[0]}", path=spec_dir / f"{row.stage}.yaml")
        job = next(d for d in docs if d["kind"] == "Job")
        made, created = self.create(plan, job)
        uid = (made.get("metadata") or {}).get("uid")
        for doc in docs:
            if doc["kind"] == "Service":
                if uid:
                    doc["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": row.job_id,
                                                           "uid": uid, "controller": False}]
                self.create(plan, doc)
        self.created_jobs.add(row.job_id)
        return job["metadata"]["annotations"][ANN_INDICES], created

    # ------------------------------------------------------------------ poll

    @property
    def last_snapshot(self) -> Snapshot | None:
        return self._snap

    def driver_active(self, snap: Snapshot) -> list[str]:
        return sorted(n for n, j in snap.drivers.items() if not job_finished(j))

    def reconcile(self, plan: RunPlan, ledger: Ledger) -> str | None:
        """Take the snapshot for this refresh. Outside the driver: while a driver runs, leave the ledger
        to it (returns "owned-by-driver"); else settle what can only be known here (a Job deleted, or
        never created because its round's driver ended)."""
        self._plan = plan
        self._rows = {j.job_id: j for j in ledger.jobs()}
        self.created_jobs = {j for j in self._rows if ledger.meta(f"k8s_created:{j}") is not None}
        unsettled = [j for j in self._rows.values() if not j.settled]
        snap = self.snapshot(plan, pods=bool(unsettled))
        self.notes = []
        active = self.driver_active(snap)
        for name in active:
            pods = snap.pods.get(name) or []
            state = pod_outcome(pods[-1] if pods else None)[1]
            self.notes.append(f"driver {name} is active (pod: {state}); it owns the ledger, so these are the states it "
                              "last recorded")
        if active and not self.driving:
            return "owned-by-driver"
        for row in unsettled:
            if row.job_id in snap.jobs:
                continue
            if row.job_id in self.created_jobs:
                why, sched = ("the Job was deleted before this shard finished (cancel, kubectl delete or its TTL)",
                              "DELETED")
            elif not self.driving and self._driver_ended(ledger, snap, row.round):
                why, sched = (f"never created: the driver of round {row.round} ended first (see `kubectl logs job/"
                              f"{driver_name(plan.run_id, row.round)}`); resubmit", "NOT_CREATED")
            else:
                continue
            self.settle_row(ledger, row, "cancelled", sched, why)
        return None

    @staticmethod
    def _driver_ended(ledger: Ledger, snap: Snapshot, round_: int) -> bool:
        """The round's driver Job finished, or was started (recorded) over a minute ago and is gone."""
        started = ledger.meta(f"k8s_driver_r{round_}")
        if not started:
            return False
        if started["name"] in snap.drivers:
            return job_finished(snap.drivers[started["name"]])
        return time.time() - float(started["at"]) > 60  # not just about to appear: its creation failed

    def settle_row(self, ledger: Ledger, row: Any, state: str, sched: str, why: str) -> None:
        for idx in row.indices:
            s = ledger.shard(row.stage, idx)
            if s and s.job_id == row.job_id and s.state in ACTIVE:
                ledger.update_shard(row.stage, idx, state, sched_state=sched, signature=why)
        ledger.settle(row.job_id)

    def _infos(self, row: Any) -> dict[tuple[str, int | None], TaskInfo]:
        assert self._snap is not None
        job = self._snap.jobs.get(row.job_id)
        if job is None:
            return {}  # not created yet (waiting for its dependencies): its shards stay pending
        return {(row.job_id, i if row.array_spec else None): t
                for i, t in shard_states(job, self._snap.pods.get(row.job_id, [])).items()}

    def live_states(self, jobs: list) -> dict[tuple[str, int | None], TaskInfo]:
        if self._snap is None:
            return {}
        out = {}
        for row in jobs:
            out.update({k: t for k, t in self._infos(row).items() if t.state in ACTIVE})
        return out

    def final_states(self, job_ids: set[str]) -> dict[tuple[str, int | None], TaskInfo]:
        if self._snap is None:
            return {}
        out = {}
        for job_id in job_ids:
            row = self._rows.get(job_id)
            if row is not None:
                out.update({k: t for k, t in self._infos(row).items() if t.state not in ACTIVE})
        return out

    def wait_for_change(self, plan: RunPlan, timeout: float) -> bool:
        """Block until one of the run's Jobs changes (a watch), or ``timeout`` seconds; True on a change."""
        from kubernetes import watch

        seen = {n: (j.get("status"), (j.get("metadata") or {}).get("annotations"))
                for n, j in {**(self._snap.jobs if self._snap else {}), **(self._snap.drivers if self._snap else {})}.items()}
        deadline = time.monotonic() + timeout
        w = watch.Watch()
        try:
            from kubernetes import client

            stream = w.stream(client.BatchV1Api(self._client(plan)).list_namespaced_job, self._ns(plan),
                              label_selector=self._selector(plan), timeout_seconds=max(1, int(timeout)),
                              _request_timeout=timeout + 1)
            self.calls["watch_namespaced_job"] += 1
            for event in stream:
                obj = event.get("raw_object") or {}
                if not self._ours(plan, obj):
                    continue
                name = obj["metadata"]["name"]
                now = (obj.get("status"), obj["metadata"].get("annotations"))
                if event.get("type") == "DELETED" or seen.get(name) != now:
                    return True
                if time.monotonic() > deadline:
                    return False
        except Exception:  # a dropped or timed-out watch is only a shorter wait
            pass
        finally:
            w.stop()
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(min(left, 1.0))
        return False

    # ------------------------------------------------------------------ cancel

    def cancel(self, job_ids: list[str], ledger: Ledger | None = None) -> None:
        """Delete the Jobs (pods go with them: propagationPolicy Background; the API's default for
        Jobs would orphan running pods). A whole-run cancel also deletes the drivers first, so
        nothing is created afterwards; cancelling from a stage on while a driver runs asks the driver
        (annotation) to cancel what it has not created yet, and leaves the ledger to it."""
        if ledger is None or not job_ids:
            return
        from grail_cluster.core.plan import read_plan

        plan = self._plan or read_plan(ledger.run_dir, verify=False)
        snap = self.snapshot(plan, pods=False)
        rows = {j.job_id: j for j in ledger.jobs()}
        unsettled = {j.job_id for j in rows.values() if not j.settled}
        active = self.driver_active(snap)
        whole = unsettled <= set(job_ids)
        if whole:
            for name in active:
                self._delete(plan, name, service=False)
        elif active:
            for name in active:
                ann = (snap.drivers[name]["metadata"].get("annotations") or {}).get(ANN_CANCEL, "")
                wanted = sorted(set(filter(None, ann.split(","))) | set(job_ids))
                self._call(plan, f"annotate Job {name}", "batch", "patch_namespaced_job", name, self._ns(plan),
                           {"metadata": {"annotations": {ANN_CANCEL: ",".join(wanted)}}})
        for job_id in job_ids:
            if job_id in snap.jobs:
                ann = snap.jobs[job_id]["metadata"].get("annotations") or {}
                self._delete(plan, job_id, service=ann.get(ANN_MULTINODE) == "true")
        if whole or not active:
            for job_id in job_ids:
                if job_id in rows:
                    self.settle_row(ledger, rows[job_id], "cancelled", "CANCELLED",
                                     "cancelled (grail-cluster cancel)")

    def _delete(self, plan: RunPlan, name: str, *, service: bool) -> None:
        self._call(plan, f"delete Job {name}", "batch", "delete_namespaced_job", name, self._ns(plan),
                   propagation_policy="Background", ok=(404,))
        if service:  # multi-node training's headless Service (owned by the Job, but be explicit)
            self._call(plan, f"delete Service {name}", "core", "delete_namespaced_service", name, self._ns(plan),
                       ok=(404,))

    # ------------------------------------------------------------------ logs

    def pod_logs(self, plan: RunPlan, stage: str, index: int, *, tail: int | None = None) -> list[tuple[str, str]]:
        """(pod name, log text) of the newest pod of shard ``index`` (every node's for multi-node
        training), read through the API: what `kubectl logs` shows, including what happened before
        the job script wrote its own log files."""
        with Ledger(plan.run_dir) as ledger:
            shard = ledger.shard(stage, index)
        if shard is None or not shard.job_id:
            raise GrailError(f"{stage} {index} was never submitted", fix=f"see `grail-cluster status {plan.run_dir}`")
        job = self._call(plan, f"read Job {shard.job_id}", "batch", "read_namespaced_job", shard.job_id,
                         self._ns(plan), ok=(404,))
        if job is None:
            raise GrailError(f"Job {shard.job_id} of {stage} {index} no longer exists (cancelled, or removed by its "
                             "ttlSecondsAfterFinished)", fix="read the log files instead: `grail-cluster logs` without --pod")
        ann = job["metadata"].get("annotations") or {}
        table = parse_ranges(ann.get(ANN_INDICES))
        multinode = ann.get(ANN_MULTINODE) == "true"
        if not multinode and index not in table:
            raise GrailError(f"{stage} {index} is not one of Job {shard.job_id}'s shards ({ann.get(ANN_INDICES)})")
        k = None if multinode else table.index(index)
        listing = self._call(plan, "list pods", "core", "list_namespaced_pod", self._ns(plan),
                             label_selector=f"job-name={shard.job_id}")
        pods = [p for p in listing.get("items") or []
                if ((p.get("metadata") or {}).get("labels") or {}).get("job-name") == shard.job_id
                and (k is None or pod_index(p) == k)]
        if not pods:
            raise GrailError(f"no pod of Job {shard.job_id} for {stage} {index} (completion index {k}) exists yet")
        pods.sort(key=lambda p: (pod_index(p) or 0, _ts(p["metadata"].get("creationTimestamp")) or 0.0))
        if not multinode:
            pods = pods[-1:]
        kwargs: dict[str, Any] = {"container": "main"}
        if tail:
            kwargs["tail_lines"] = tail
        return [(p["metadata"]["name"], self._call(plan, f"read the log of pod {p['metadata']['name']}", "core",
                                                   "read_namespaced_pod_log", p["metadata"]["name"], self._ns(plan),
                                                   **kwargs)) for p in pods]
