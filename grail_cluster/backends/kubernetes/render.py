"""Rendering (pure): a stage is an Indexed Job whose completion index k runs shard
``GRAIL_INDEX_TABLE[k]`` (the table is ``0-(N-1)`` for a first run and only the chosen shards for a
resubmit); per-shard data stays in plan.json on the shared volume, never in the Job (etcd's request
size limit). Multi-node training is an Indexed Job with one pod per node behind a headless Service,
so pod 0 has a stable DNS name for ``accelerate launch``'s rendezvous. ``driver.yaml`` holds the
driver Job and its RBAC. :func:`retarget` and :func:`driver_objects` make the per-submission copies.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import jinja2
import yaml

from grail_cluster.backends.groups import compress_ranges
from grail_cluster.backends.kubernetes.names import (
    ANN_DEPENDS,
    ANN_INDICES,
    ANN_MULTINODE,
    ANN_PLAN_HASH,
    ANN_RUN_ID,
    DRIVER_FINISHED_WITH_FAILURES,
    LABEL_MANAGED,
    LABEL_QUEUE,
    LABEL_ROLE,
    LABEL_ROUND,
    LABEL_RUN,
    LABEL_STAGE,
    SECRET_NAME,
    driver_name,
    job_name,
    run_label,
)
from grail_cluster.core.errors import EXIT_USAGE, ConfigError, GrailError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import RunPlan
from grail_cluster.core.settings import KubernetesCluster


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise GrailError("rendered manifest missing", path=path,
                         fix="re-run `grail-cluster run ... cluster=kubernetes` to render it") from None
    return [d for d in yaml.safe_load_all(text) if d]


def _quantities(spec: JobSpec, gpu_resource: str) -> tuple[dict[str, str], dict[str, str]]:
    r = spec.resources
    requests = {"cpu": str(r.cpus), "memory": f"{math.ceil(r.mem_gb)}Gi"}
    limits = {"memory": f"{math.ceil(r.mem_gb)}Gi"}
    if r.gpus:
        requests[gpu_resource] = str(r.gpus)
        limits[gpu_resource] = str(r.gpus)
    return requests, limits


def _secret_env(cluster: KubernetesCluster, spec: JobSpec) -> list[tuple[str, dict[str, str]]]:
    """``cluster.secret_env`` as (name, {secret, key}); refuses credentials in plain env."""
    plain = sorted(k for k in spec.env if SECRET_NAME.search(k))
    if plain:
        raise ConfigError(
            f"{plain[0]} would be written into the Job manifest in plain text (job.env / sonic.env)",
            fix=f"store it in a Secret and pass `+cluster.secret_env.{plain[0]}={{secret:NAME,key:KEY}}` instead")
    out = []
    for name, ref in sorted((cluster.secret_env or {}).items()):
        if not isinstance(ref, dict) or not ref.get("secret") or not ref.get("key"):
            raise ConfigError(f"cluster.secret_env.{name} must be {{secret: <Secret name>, key: <key>}}, got {ref!r}",
                              fix=f"+cluster.secret_env.{name}={{secret:wandb,key:api-key}}")
        out.append((str(name), {"secret": str(ref["secret"]), "key": str(ref["key"])}))
    return out


def _volumes(cluster: KubernetesCluster, shm: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    mounts, volumes = [], []
    if cluster.pvc:
        mounts.append({"name": "workspace", "mountPath": cluster.mount_path})
        volumes.append({"name": "workspace", "persistentVolumeClaim": {"claimName": cluster.pvc}})
    if shm:
        # Isaac Lab and NCCL need more shared memory than the container default (64 MiB).
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    return mounts, volumes


def base_labels(plan: RunPlan, role: str) -> dict[str, str]:
    return {LABEL_MANAGED: "grail-cluster", LABEL_RUN: run_label(plan.run_id), LABEL_ROLE: role, LABEL_ROUND: "0"}


def render_manifest(plan: RunPlan, spec: JobSpec, env: jinja2.Environment) -> str:
    cluster = plan.settings.cluster
    name = job_name(plan.run_id, spec.stage)
    # Pods carry the run/stage labels (status lists them by label); only the Job carries Kueue's.
    labels = {**base_labels(plan, "stage"), LABEL_STAGE: spec.stage}
    job_labels = dict(labels)
    if cluster.queue:
        job_labels[LABEL_QUEUE] = cluster.queue
    table = compress_ranges(list(range(spec.size)))
    annotations = {
        ANN_RUN_ID: plan.run_id,
        ANN_PLAN_HASH: plan.plan_hash,
        ANN_DEPENDS: ",".join(f"{d.kind}:{d.stage}" for d in spec.depends_on),
        ANN_INDICES: table,
        ANN_MULTINODE: "true" if spec.multinode else "false",
    }
    port = int(plan.settings.train.master_port or 29500)
    script = env.get_template("kubernetes/script.sh.j2").render(spec=spec, bad_input_exit_code=EXIT_USAGE)
    requests, limits = _quantities(spec, cluster.gpu_resource)
    mounts, volumes = _volumes(cluster, shm=spec.stage in ("train", "eval"))
    completions = spec.resources.nodes if spec.multinode else spec.size
    parallelism = completions if spec.multinode else min(spec.size, int(cluster.array_parallelism or spec.size))
    max_failed = cluster.max_failed_indexes
    node_selector = dict(cluster.node_selector or {})
    tolerations = list(cluster.tolerations or [])
    if spec.resources.gpus:
        node_selector.update(cluster.gpu_node_selector or {})
        tolerations += list(cluster.gpu_tolerations or [])
    return env.get_template("kubernetes/job.yaml.j2").render(
        spec=spec, cluster=cluster, name=name, labels=labels, job_labels=job_labels, annotations=annotations,
        script=script, requests=requests, limits=limits, volume_mounts=mounts, volumes=volumes,
        completions=completions, parallelism=parallelism, master_port=port, table=table,
        max_failed_indexes=None if max_failed is None else min(int(max_failed), completions),
        master_addr=f"{name}-0.{name}.{cluster.namespace}.svc", bad_input_exit_code=EXIT_USAGE,
        active_deadline=int(spec.resources.time_min) * 60, secret_env=_secret_env(cluster, spec),
        pull_secrets=[{"name": s} for s in cluster.image_pull_secrets or []],
        node_selector=node_selector, tolerations=tolerations,
    )


def render_driver(plan: RunPlan, env: jinja2.Environment) -> str:
    from grail_cluster.sonic.commands import shell_join

    cluster = plan.settings.cluster
    driver = cluster.driver
    name = driver_name(plan.run_id)
    mounts, volumes = _volumes(cluster, shm=False)
    return env.get_template("kubernetes/driver.yaml.j2").render(
        plan=plan, cluster=cluster, driver=driver, name=name,
        labels=base_labels(plan, "driver"), rbac_labels={LABEL_MANAGED: "grail-cluster"},
        annotations={ANN_RUN_ID: plan.run_id, ANN_PLAN_HASH: plan.plan_hash},
        command=shell_join([plan.settings.job.python, "-m", "grail_cluster", "drive", plan.run_dir]),
        setup=list(plan.settings.job.setup or []), log_dir=os.path.join(plan.paths["logs_dir"], "drive"),
        requests={"cpu": str(driver.cpu), "memory": str(driver.memory)}, limits={"memory": str(driver.memory)},
        volume_mounts=mounts, volumes=volumes, bad_input_exit_code=EXIT_USAGE,
        finished_with_failures=DRIVER_FINISHED_WITH_FAILURES,
        pull_secrets=[{"name": s} for s in cluster.image_pull_secrets or []],
    )


def render(plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
    files = {f"{spec.stage}.yaml": render_manifest(plan, spec, env) for spec in specs}
    files["driver.yaml"] = render_driver(plan, env)
    return files


# ----------------------------------------------------------------------------- per-submission copies (pure)


def env_list(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"][0].setdefault("env", [])


def set_env(doc: dict[str, Any], name: str, value: str) -> None:
    env = env_list(doc)
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
    set_env(job, "GRAIL_INDEX_TABLE", table)
    set_env(job, "GRAIL_ATTEMPT", str(round_))
    if multinode:
        pod["spec"]["subdomain"] = name
        set_env(job, "GRAIL_MASTER_ADDR", f"{name}-0.{name}.{namespace}.svc")
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
    set_env(job, "GRAIL_DRIVE_ROUND", str(round_))
    return rbac, job
