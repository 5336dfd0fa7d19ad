"""A Kubernetes API on 127.0.0.1 for tests: the ``kmock`` emulator, plus the test playing controller.

``kmock`` stores objects and serves create / read / list / watch / patch / delete, but runs no
controllers and ignores label selectors. So :class:`Controller` does what the Job controller and the
kubelet would: for each completion index of a Job it runs the rendered container script for real
(``bash -c`` with the pod's env: ``JOB_COMPLETION_INDEX``, the index table, the attempt), retries it
as ``backoffLimitPerIndex`` and the ``FailIndex`` exit codes say, records Pod objects, and writes the
Job status (``completedIndexes``, ``failedIndexes``, ``succeeded``, ``failed``, conditions) through
the API, as a controller would.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import yaml

RESOURCES = ("batch/v1/jobs", "v1/pods", "v1/services", "v1/serviceaccounts",
             "rbac.authorization.k8s.io/v1/roles", "rbac.authorization.k8s.io/v1/rolebindings")


class KmockServer:
    """kmock's KubernetesEmulator on 127.0.0.1 in a background thread (the official client is synchronous)."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.handler: Any = None
        self.url = ""
        self.log_text: dict[str, str] = {}  # pod name -> what its log endpoint returns
        self._thread = threading.Thread(target=self._serve, name="kmock", daemon=True)

    def _pod_log(self, request: Any) -> bytes:
        return self.log_text.get(request.name, f"log of {request.name}\n").encode()

    def _serve(self) -> None:
        import kmock

        async def main() -> None:
            self._stop = asyncio.Event()
            async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s, host="127.0.0.1") as server:
                for res in RESOURCES:
                    k8s.resources[res] = {}
                # kmock serves a pod's JSON on /log; answer like the kubelet does, with text.
                k8s["get", kmock.resource("v1/pods"), kmock.subresource("log")] << self._pod_log
                self.handler, self.url = k8s, str(server.url).rstrip("/")
                self._ready.set()
                await self._stop.wait()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())
        self._loop.close()

    def start(self) -> KmockServer:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("kmock did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def requests(self, method: str | None = None, resource: str | None = None) -> list[Any]:
        """Requests served so far (read from the test thread: a list the server only appends to)."""
        out = []
        for req in list(self.handler._requests):
            if method and str(getattr(req.method, "value", req.method)).upper() != method.upper():
                continue
            if resource and (req.resource is None or req.resource.plural != resource):
                continue
            out.append(req)
        return out

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester", "namespace": "default"}}],
        }))
        return path


def _now(offset: float = 0.0) -> str:
    t = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def compress(ids: list[int]) -> str:
    from grail_cluster.backends.groups import compress_ranges

    return compress_ranges(ids)


class Controller:
    """Plays the Job controller and the kubelet against the API, through the official client."""

    def __init__(self, api_client: Any, namespace: str = "default"):
        from kubernetes import client

        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.ns = namespace
        self.ran: list[str] = []  # Job names this controller ran, in order
        self.pod_seq = 0

    # ------------------------------------------------------------------ reading

    def job(self, name: str) -> dict[str, Any]:
        import json

        return json.loads(self.batch.read_namespaced_job(name, self.ns, _preload_content=False).data)

    def jobs(self) -> dict[str, dict[str, Any]]:
        import json

        items = json.loads(self.batch.list_namespaced_job(self.ns, _preload_content=False).data)["items"]
        return {j["metadata"]["name"]: j for j in items}

    def stage_jobs(self) -> dict[str, dict[str, Any]]:
        return {n: j for n, j in self.jobs().items()
                if (j["metadata"].get("labels") or {}).get("grail-cluster/role") == "stage"}

    def pending(self) -> list[str]:
        """Stage Jobs created but not run yet, in creation order."""
        return [n for n in self.stage_jobs() if n not in self.ran]

    # ------------------------------------------------------------------ writing

    def set_status(self, name: str, **status: Any) -> None:
        self.batch.patch_namespaced_job_status(name, self.ns, {"status": status})

    def finish(self, name: str, *, failed: bool = False) -> None:
        kind = "Failed" if failed else "Complete"
        self.set_status(name, conditions=[{"type": kind, "status": "True", "reason": "Test"}])

    def add_pod(self, job: dict[str, Any], k: int, *, exit_code: int | None, reason: str | None = None,
                phase: str | None = None) -> str:
        name = job["metadata"]["name"]
        self.pod_seq += 1
        pod_name = f"{name}-{k}-p{self.pod_seq:04d}"
        labels = {**(job["spec"]["template"]["metadata"].get("labels") or {}),
                  "job-name": name, "batch.kubernetes.io/job-name": name,
                  "batch.kubernetes.io/job-completion-index": str(k)}
        if phase is None:
            phase = "Running" if exit_code is None else ("Succeeded" if exit_code == 0 else "Failed")
        state: dict[str, Any] = {"running": {"startedAt": _now(-1)}}
        if exit_code is not None:
            state = {"terminated": {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                                    "startedAt": _now(-1), "finishedAt": _now()}}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": self.ns, "labels": labels, "creationTimestamp": _now(),
                            "annotations": {"batch.kubernetes.io/job-completion-index": str(k)}},
               "spec": {"nodeName": f"node-{k % 3}", "containers": job["spec"]["template"]["spec"]["containers"]},
               "status": {"phase": phase, "startTime": _now(-1),
                          "containerStatuses": [{"name": "main", "state": state, "image": "registry.example/grail:1",
                                                 "imageID": "", "ready": exit_code is None, "restartCount": 0}]}}
        self.core.create_namespaced_pod(self.ns, pod, _preload_content=False)
        return pod_name

    def _env(self, job: dict[str, Any], k: int) -> dict[str, str]:
        env = dict(os.environ)
        for e in job["spec"]["template"]["spec"]["containers"][0].get("env") or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
            elif "fieldRef" in (e.get("valueFrom") or {}):
                env[e["name"]] = str(k)  # the completion index annotation
            elif "secretKeyRef" in (e.get("valueFrom") or {}):
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = f"secret:{ref['name']}/{ref['key']}"
        return env

    def run_job(self, name: str, *, fail_exit: dict[int, int] | None = None) -> dict[str, Any]:
        """Run every completion index of Job ``name`` for real (the rendered script), with the Job's
        retry semantics, then write its status. ``fail_exit``: completion index -> exit code to
        report instead of running (a pod the test makes fail)."""
        job = self.job(name)
        spec = job["spec"]
        container = spec["template"]["spec"]["containers"][0]
        script = container["args"][0]
        retries = spec.get("backoffLimitPerIndex", spec.get("backoffLimit", 0))
        fail_index = set()
        for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
            if rule.get("action") in ("FailIndex", "FailJob") and rule.get("onExitCodes"):
                fail_index |= set(rule["onExitCodes"]["values"])
        completed, failed = [], []
        for k in range(spec["completions"]):
            for _attempt in range(retries + 1):
                if fail_exit and k in fail_exit:
                    code = fail_exit[k]
                else:
                    proc = subprocess.run(["bash", "-c", script], env=self._env(job, k), capture_output=True,
                                          text=True, timeout=300)
                    code = proc.returncode
                self.add_pod(job, k, exit_code=code)
                if code == 0 or code in fail_index:
                    break
            (completed if code == 0 else failed).append(k)
        status: dict[str, Any] = {"succeeded": len(completed), "failed": len(failed), "active": 0,
                                  "completedIndexes": compress(completed)}
        if failed:
            status["failedIndexes"] = compress(failed)
            status["conditions"] = [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}]
        else:
            status["conditions"] = [{"type": "Complete", "status": "True", "reason": "Completed"}]
        self.set_status(name, **status)
        self.ran.append(name)
        return status
