"""Kubernetes rendering: one Indexed Job per stage (completion index = shard index).

Multi-node training is an Indexed Job with one pod per node behind a headless Service, so pod 0 has
a stable DNS name for the rendezvous. Per-shard data stays in plan.json on the shared volume, never
in the Job spec (etcd's request size limit).
"""

from __future__ import annotations

import hashlib
import math
import re

import jinja2

from ..jobspec import JobSpec
from ..plan import RunPlan

MAX_NAME = 63


def k8s_name(run_id: str, stage: str) -> str:
    """A DNS-1123 label ``<run>-<stage>``; long run ids keep a hash so names stay unique."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"{run_id}-{stage}".lower()).strip("-")
    if len(base) <= MAX_NAME - 6:  # Indexed Job pods add "-<index>-<suffix>"; keep room for hostnames
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[: MAX_NAME - 16].rstrip('-')}-{digest}-{stage[:5]}".strip("-")


def _quantities(spec: JobSpec, gpu_resource: str) -> tuple[dict[str, str], dict[str, str]]:
    r = spec.resources
    requests = {"cpu": str(r.cpus), "memory": f"{math.ceil(r.mem_gb)}Gi"}
    limits = {"memory": f"{math.ceil(r.mem_gb)}Gi"}
    if r.gpus:
        requests[gpu_resource] = str(r.gpus)
        limits[gpu_resource] = str(r.gpus)
    return requests, limits


def render_manifest(plan: RunPlan, spec: JobSpec, env: jinja2.Environment) -> str:
    cluster = plan.config["cluster"]
    name = k8s_name(plan.run_id, spec.stage)
    labels = {
        "app.kubernetes.io/managed-by": "grail-cluster",
        "grail-cluster/run": re.sub(r"[^A-Za-z0-9_.-]", "-", plan.run_id)[:63].strip("-_."),
        "grail-cluster/stage": spec.stage,
    }
    if cluster.get("queue"):
        labels["kueue.x-k8s.io/queue-name"] = cluster["queue"]
    annotations = {
        "grail-cluster/run-id": plan.run_id,
        "grail-cluster/plan-hash": plan.plan_hash,
        "grail-cluster/depends-on": ",".join(f"{d.kind}:{d.stage}" for d in spec.depends_on),
    }
    port = int(plan.config["train"].get("master_port") or 29500)
    script = env.get_template("kubernetes/script.sh.j2").render(spec=spec)
    requests, limits = _quantities(spec, cluster["gpu_resource"])
    mounts, volumes = [], []
    if cluster.get("pvc"):
        mounts.append({"name": "workspace", "mountPath": cluster["mount_path"]})
        volumes.append({"name": "workspace", "persistentVolumeClaim": {"claimName": cluster["pvc"]}})
    if spec.stage in ("train", "eval"):
        # Isaac Lab and NCCL need more shared memory than the container default (64 MiB).
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    completions = spec.resources.nodes if spec.multinode else spec.size
    parallelism = completions if spec.multinode else min(spec.size, int(cluster.get("array_parallelism") or spec.size))
    return env.get_template("kubernetes/job.yaml.j2").render(
        spec=spec, cluster=cluster, name=name, labels=labels, annotations=annotations, script=script,
        requests=requests, limits=limits, volume_mounts=mounts, volumes=volumes,
        completions=completions, parallelism=parallelism, master_port=port,
        master_addr=f"{name}-0.{name}.{cluster['namespace']}.svc",
    )


def render(plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
    return {f"{spec.stage}.yaml": render_manifest(plan, spec, env) for spec in specs}
