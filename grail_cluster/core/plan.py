"""The central plan's model: stages, dependencies, eval shards and every training rank's data.

:func:`grail_cluster.runs.planner.build_plan` computes it once (pure: config + library index in,
:class:`RunPlan` out). The plan is written to ``runs/<run_id>/plan.json`` with a content hash; every
job reads its slice from there and checks the hash, so nothing downstream re-derives work from
scheduler arithmetic.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import DataError, GrailError
from grail_cluster.core.settings import Settings, settings

PLAN_VERSION = 1
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class Dependency:
    stage: str
    kind: str  # afterok: after every index of `stage` succeeded; aftercorr: index i after index i


@dataclass(frozen=True)
class Resources:
    nodes: int
    gpus: int  # per node
    cpus: int  # per task
    mem_gb: float  # per node
    time_min: int


@dataclass
class StagePlan:
    name: str
    size: int  # number of indices (1 for a single job)
    depends_on: list[Dependency]
    resources: Resources
    requeue: bool = False  # preemptible: SLURM --requeue and a USR2 warning
    # Array or single job is the stage's own rule (its is_array(size) in the stage registry), not
    # stored here: plan.json keeps its fields, and the model does not know the stages.


@dataclass
class TrainRank:
    rank: int
    node: int
    local_rank: int
    motion_keys: list[str]
    usd_paths: list[str]
    start: int | None = None  # HOI block bounds in the sorted key list
    stop: int | None = None
    window_start: int | None = None  # terrain cyclic window start
    unused_past_num_envs: int = 0


@dataclass
class EvalShard:
    shard: int
    motion_keys: list[str]
    frames: int
    num_envs: int
    sonic_overrides: list[str]


@dataclass
class RunPlan:
    version: int
    run_id: str
    run_dir: str
    grail_cluster_version: str
    pipeline: dict[str, Any]
    backend: str
    library: dict[str, Any]
    paths: dict[str, str]
    stages: list[StagePlan]
    train: dict[str, Any]
    eval: dict[str, Any]
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    # SONIC commit, BPS hash, image, tool version (provenance.sources); {} when the caller did not
    # collect them. The full record is written beside plan.json as provenance.json.
    provenance: dict[str, Any] = field(default_factory=dict)
    plan_hash: str = ""

    def stage(self, name: str) -> StagePlan:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def eval_index(self, index: int) -> tuple[int, EvalShard]:
        """Eval/render/export index -> (checkpoint rank, shard): index = checkpoint * N + shard."""
        n = self.eval["num_shards"]
        c, s = divmod(index, n)
        if not 0 <= c < self.eval["num_checkpoints"]:
            raise IndexError(f"eval index {index} outside 0..{n * self.eval['num_checkpoints'] - 1}")
        return c, self.eval_shards[s]

    @property
    def eval_shards(self) -> list[EvalShard]:
        # Built once: eval_index() is called per index, and rebuilding made rendering quadratic.
        cached = self.__dict__.get("_eval_shards")
        if cached is None:
            cached = [s if isinstance(s, EvalShard) else EvalShard(**s) for s in self.eval["shards"]]
            self.__dict__["_eval_shards"] = cached
        return cached

    @property
    def settings(self) -> Settings:
        """The typed view of ``config`` (``plan.settings.eval.num_shards``); ``config`` stays the dict
        plan.json holds and hashes."""
        # Built once, beside the fields (asdict and plan.json never see it): stages read it per index.
        cached = self.__dict__.get("_settings")
        if cached is None:
            cached = settings(self.config)
            self.__dict__["_settings"] = cached
        return cached

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_sweep(self) -> bool:
        return "points" in self.train

    def experiment_dir(self, point: int = 0) -> str:
        """The experiment dir training point ``point`` writes (a single run has one, point 0)."""
        if self.is_sweep:
            return self.train["points"][point]["experiment_dir"]
        return self.paths["experiment_dir"]

    def point_config(self, point: int = 0) -> dict[str, Any]:
        """The resolved config of training point ``point``: the run's, with the point's own train settings."""
        if not self.is_sweep:
            return self.config
        return _merged(self.config, self.train["points"][point]["config"])

    def point_settings(self, point: int = 0) -> Settings:
        """The typed view of :meth:`point_config`."""
        if not self.is_sweep:
            return self.settings
        return settings(self.point_config(point))

    def marker_hash(self, stage: str, index: int) -> str:
        """The hash a shard's success marker must carry: the plan's own, or the shard's key where the
        plan lists one (a Hydra sweep's plan: each job's config and overrides), so a plan that
        grows or changes keeps the markers of unchanged jobs valid."""
        keys = self.pipeline.get("marker_keys", {}).get(stage)
        return keys[index] if keys else self.plan_hash

    def point_train(self, point: int = 0) -> dict[str, Any]:
        """World size and rank slices of point ``point``'s training."""
        return self.train["points"][point] if self.is_sweep else self.train


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and v else v
    return out


# ----------------------------------------------------------------------------- hashing


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(plan_dict: dict[str, Any]) -> str:
    body = {k: v for k, v in plan_dict.items() if k != "plan_hash"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


# ----------------------------------------------------------------------------- reading and writing


def submitted_plan_hash(run_dir: str | Path) -> str | None:
    """The plan hash the run's ledger recorded at submission, else None (never submitted)."""
    run_dir = Path(run_dir)
    if not (run_dir / "ledger.sqlite").exists():
        return None
    from grail_cluster.core.ledger import Ledger

    with Ledger(run_dir) as ledger:
        return ledger.meta("plan_hash")


def write_plan(plan: RunPlan, run_dir: str | Path | None = None) -> Path:
    """Atomically write plan.json (temp file + rename), and provenance.json beside it; return the
    plan's path."""
    from grail_cluster.core.provenance import record, write_provenance

    run_dir = Path(run_dir or plan.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / PLAN_FILE
    recorded = submitted_plan_hash(run_dir)
    if recorded and recorded != plan.plan_hash:
        # A submitted run's jobs read this file; replacing it would orphan them and lose its plan.
        # The run id does not depend on the code, so a re-run after a code change lands here.
        from grail_cluster.core.provenance import read_provenance, source_changes

        changed = source_changes(read_provenance(run_dir), plan.provenance) if plan.provenance else []
        why = f"; changed since: {', '.join(changed)}" if changed else ""
        raise GrailError(f"run {plan.run_id} was submitted with another plan ({recorded[:12]}){why}", path=run_dir,
                         fix="start a fresh run with run.id=<new id>; a run dir holds one plan (its done shards "
                             "came from the code it was planned with)")
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".plan.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(plan.to_json(), fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
    write_provenance(run_dir, record(plan))
    return path


def _from_dict(d: dict[str, Any]) -> RunPlan:
    stages = [
        StagePlan(s["name"], s["size"], [Dependency(**x) for x in s["depends_on"]], Resources(**s["resources"]), s["requeue"])
        for s in d["stages"]
    ]
    return RunPlan(**{**d, "stages": stages})


def read_plan(run_dir: str | Path, *, verify: bool = True, rendered_hash: str | None = None) -> RunPlan:
    """The plan of ``run_dir``; ``rendered_hash`` (a job's ``--plan-hash``) refuses a plan that changed
    since the job was rendered."""
    path = Path(run_dir) / PLAN_FILE
    try:
        with open(path) as fh:
            d = json.load(fh)
    except FileNotFoundError:
        raise DataError("no plan.json here", path=path, fix="pass a run dir written by `grail-cluster plan`") from None
    except ValueError as exc:
        raise DataError(f"plan.json is not valid JSON: {exc}", path=path, fix="re-run `grail-cluster plan`") from None
    if d.get("version") != PLAN_VERSION:
        raise DataError(f"plan version {d.get('version')} is not {PLAN_VERSION}", path=path,
                        fix="re-plan with this grail-cluster version")
    if verify and content_hash(d) != d.get("plan_hash"):
        raise DataError("plan.json does not match its plan_hash (edited after planning?)", path=path,
                        fix="re-run `grail-cluster plan` instead of editing plan.json by hand")
    if rendered_hash and d.get("plan_hash") != rendered_hash:
        raise DataError(f"plan.json changed since this job was rendered ({(d.get('plan_hash') or '')[:12]} != {rendered_hash[:12]})",
                        path=os.path.join(run_dir, "plan.json"),
                        fix="re-render and resubmit the run (`grail-cluster run ...`) instead of editing its plan")
    return _from_dict(d)
