"""Kubernetes names, labels and index tables: what every other part of the backend (manifests, the
client, the driver) agrees on. Job names are deterministic (``<run>-<stage>[-c<chunk>][-r<round>]``),
so a restarted driver adopts what already exists.
"""

from __future__ import annotations

import hashlib
import re

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
# Names that hold credentials must come from a Secret, never from plain env in the manifest.
SECRET_NAME = re.compile(r"API_?KEY|TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL", re.I)


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
