"""The client side: :class:`KubernetesBackend`, the run's Jobs and pods through the official
``kubernetes`` client.

Submission: ``run`` records every stage in the ledger and starts the driver Job; the driver
(:mod:`grail_cluster.backends.kubernetes.driver`, in the cluster) creates each stage's Job when the
Jobs it depends on have finished, so nothing has to stay up on the submitting machine.

Status: two list calls per refresh whatever the shard count (the run's Jobs, the run's pods). While a
driver Job of the run is active it is the only writer of the ledger: a refresh from another machine
then reads the ledger without writing (``reconcile``).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from grail_cluster.backends.base import Capabilities, FoundRun, TaskStates, unsupported
from grail_cluster.backends.kubernetes.lint import lint_manifest
from grail_cluster.backends.kubernetes.names import (
    ANN_CANCEL,
    ANN_INDICES,
    ANN_MULTINODE,
    ANN_RUN_ID,
    LABEL_ROLE,
    LABEL_RUN,
    driver_name,
    job_name,
    parse_ranges,
    run_label,
)
from grail_cluster.backends.kubernetes.render import driver_objects, load_manifests, render, retarget
from grail_cluster.backends.kubernetes.states import (
    job_finished,
    parse_time,
    pod_index,
    pod_outcome,
    shard_states,
)
from grail_cluster.core.errors import GrailError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.ledger import JobRow, Ledger
from grail_cluster.core.plan import RunPlan
from grail_cluster.core.states import ACTIVE, ShardState


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
    capabilities = Capabilities(pod_logs=True)

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
                                        context=plan.settings.cluster.context, client_configuration=cfg)
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

        namespace = plan.settings.cluster.namespace
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
        return plan.settings.cluster.namespace

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

    def render(self, plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
        return render(plan, specs, env)

    def find_by_name(self, names: list[str]) -> dict[str, str]:
        return {}  # the driver adopts Jobs by their deterministic names when it creates them

    def find_run_jobs(self, plan: RunPlan, arrays: Mapping[str, bool]) -> FoundRun:
        raise unsupported(self.name, "keeps a run's record in its driver's ledger",
                          "the in-cluster driver's ledger is the record: see docs/kubernetes.md")

    def max_array_size(self) -> int | None:
        return None

    def prepare(self, plan: RunPlan, stages: list[str]) -> None:
        """Everything that can fail before the ledger records a submission: config, files, API access, RBAC."""
        cluster = plan.settings.cluster
        if not cluster.pvc:
            raise GrailError("cluster.pvc is not set: the run dir, plan and markers must be on a volume every pod mounts",
                             fix="cluster.pvc=<PersistentVolumeClaim> cluster.mount_path=/workspace run.root=/workspace/runs")
        mount = os.path.normpath(cluster.mount_path)
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
        if cluster.driver.create_rbac:
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
            self.settle_row(ledger, row, ShardState.CANCELLED, sched, why)
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

    def settle_row(self, ledger: Ledger, row: Any, state: ShardState, sched: str, why: str) -> None:
        for idx in row.indices:
            s = ledger.shard(row.stage, idx)
            if s and s.job_id == row.job_id and s.state in ACTIVE:
                ledger.update_shard(row.stage, idx, state, sched_state=sched, signature=why)
        ledger.settle(row.job_id)

    def _infos(self, row: Any) -> TaskStates:
        assert self._snap is not None
        job = self._snap.jobs.get(row.job_id)
        if job is None:
            return {}  # not created yet (waiting for its dependencies): its shards stay pending
        return {(row.job_id, i if row.array_spec else None): t
                for i, t in shard_states(job, self._snap.pods.get(row.job_id, [])).items()}

    def live_states(self, jobs: list[JobRow]) -> TaskStates:
        if self._snap is None:
            return {}
        out = {}
        for row in jobs:
            out.update({k: t for k, t in self._infos(row).items() if t.state in ACTIVE})
        return out

    def final_states(self, jobs: list[JobRow]) -> TaskStates:
        if self._snap is None:
            return {}
        out = {}
        for job in jobs:
            row = self._rows.get(job.job_id)
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

    def task_id(self, job: JobRow, index: int) -> str:
        raise unsupported(self.name, "cancels whole jobs only", "cancel the whole stage")

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
                    self.settle_row(ledger, rows[job_id], ShardState.CANCELLED, "CANCELLED",
                                     "cancelled (grail-cluster cancel)")

    def _delete(self, plan: RunPlan, name: str, *, service: bool) -> None:
        self._call(plan, f"delete Job {name}", "batch", "delete_namespaced_job", name, self._ns(plan),
                   propagation_policy="Background", ok=(404,))
        if service:  # multi-node training's headless Service (owned by the Job, but be explicit)
            self._call(plan, f"delete Service {name}", "core", "delete_namespaced_service", name, self._ns(plan),
                       ok=(404,))

    # ------------------------------------------------------------------ logs

    def log_paths(self, plan: RunPlan, stage: str, index: int, attempt: int, job: JobRow | None = None) -> list[Path]:
        return []  # a pod's own output lives in the API: pod_logs()

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
        pods.sort(key=lambda p: (pod_index(p) or 0, parse_time(p["metadata"].get("creationTimestamp")) or 0.0))
        if not multinode:
            pods = pods[-1:]
        kwargs: dict[str, Any] = {"container": "main"}
        if tail:
            kwargs["tail_lines"] = tail
        return [(p["metadata"]["name"], self._call(plan, f"read the log of pod {p['metadata']['name']}", "core",
                                                   "read_namespaced_pod_log", p["metadata"]["name"], self._ns(plan),
                                                   **kwargs)) for p in pods]
