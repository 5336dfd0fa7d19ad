"""Reading a SONIC experiment dir (contracts §2.4, §2.5) and SONIC's resume rule (§2.2).

An experiment dir is ``${base_dir}/${project_name}/${experiment_name}-${timestamp}`` (grail-cluster
passes a fixed ``++experiment_dir`` instead, so select and a requeued job find it). It holds:

- ``config.yaml``: the **unresolved** Hydra config, written before the envs are created;
- ``meta.yaml``: ``wandb_run`` (the W&B run id a restart reuses) and ``max_train_steps``;
- ``model_step_{step:06d}.pt`` every ``save_frequency`` iterations, and ``last.pt``, a real file
  rewritten every 50 steps (temp file + atomic rename);
- TensorBoard event files (``events.out.tfevents.*``, anywhere below the dir).

A checkpoint counts as ready 60 s after its last write, as SONIC's own eval watcher does: a file
younger than that may still be replaced (``last.pt``) or belong to a save in progress.

Everything here only reads; :func:`resolve_resume` is a pure function of the paths plus what is on
disk, so the plan, ``doctor`` and the tests can say what a given command line will load.
"""

from __future__ import annotations

import glob
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import DataError

CHECKPOINT_RE = re.compile(r"^model_step_(\d+)\.pt$")
LAST = "last.pt"
CONFIG = "config.yaml"
META = "meta.yaml"
EVENTS_GLOB = "events.out.tfevents.*"
SETTLE_S = 60.0
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
_TIMESTAMP_SUFFIX = re.compile(r"-(\d{8}_\d{6})$")


@dataclass(frozen=True)
class Checkpoint:
    path: str
    step: int | None  # None for last.pt (its step is inside the file, not in the name)
    size: int
    mtime: float

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def is_last(self) -> bool:
        return self.step is None

    def ready(self, now: float | None = None, settle_s: float = SETTLE_S) -> bool:
        return (time.time() if now is None else now) - self.mtime >= settle_s


def step_of(path: str | Path) -> int | None:
    """``model_step_001500.pt`` -> 1500 (any zero padding); anything else -> None."""
    m = CHECKPOINT_RE.match(os.path.basename(str(path)))
    return int(m.group(1)) if m else None


def list_checkpoints(exp_dir: str | Path) -> list[Checkpoint]:
    """``model_step_*.pt`` by step, then ``last.pt``; an absent dir has none.

    One ``scandir`` (no glob, no per-file ``stat`` beyond the entry's), so a dir with thousands of
    checkpoints and event files lists quickly. Files that vanish while listing are skipped."""
    steps: list[Checkpoint] = []
    last: Checkpoint | None = None
    try:
        it = os.scandir(exp_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    with it:
        for entry in it:
            name = entry.name
            step = step_of(name)
            if step is None and name != LAST:
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue
            ck = Checkpoint(os.path.join(os.path.abspath(exp_dir), name), step, st.st_size, st.st_mtime)
            if step is None:
                last = ck
            else:
                steps.append(ck)
    steps.sort(key=lambda c: (c.step, c.name))
    return steps + ([last] if last else [])


def ready_checkpoints(exp_dir: str | Path, now: float | None = None, settle_s: float = SETTLE_S) -> list[Checkpoint]:
    """The checkpoints whose last write is at least ``settle_s`` seconds before ``now``."""
    now = time.time() if now is None else now
    return [c for c in list_checkpoints(exp_dir) if c.ready(now, settle_s)]


def latest_step(exp_dir: str | Path) -> int | None:
    steps = [c.step for c in list_checkpoints(exp_dir) if c.step is not None]
    return max(steps) if steps else None


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{path.name} is not valid YAML: {str(exc).splitlines()[0]}", path=path,
                        fix="the trainer writes it; if a copy was truncated, restore it from the run's node") from None


def read_config(exp_dir: str | Path) -> dict[str, Any] | None:
    """``config.yaml`` as written (unresolved: ``${...}`` interpolations are kept as strings)."""
    data = _read_yaml(Path(exp_dir) / CONFIG)
    if data is not None and not isinstance(data, dict):
        raise DataError("config.yaml does not hold a mapping", path=Path(exp_dir) / CONFIG)
    return data


def read_meta(exp_dir: str | Path) -> dict[str, Any] | None:
    """``meta.yaml`` (``wandb_run``, ``max_train_steps``), or None when the run has not written it."""
    path = Path(exp_dir) / META
    data = _read_yaml(path)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise DataError("meta.yaml does not hold a mapping", path=path,
                        fix="it should read `wandb_run: <id>` and `max_train_steps: <n>`")
    out = dict(data)
    if "wandb_run" not in out and "wandb_id" in out:  # the docs' name (§10.4); the code writes wandb_run
        out["wandb_run"] = out["wandb_id"]
    # Typed here, once: a list or a mapping as the W&B id would be str()-ed into a run id nobody has.
    run = out.get("wandb_run")
    if run is not None and not isinstance(run, str | int):
        raise DataError(f"meta.yaml: wandb_run is a {type(run).__name__}, not a W&B run id", path=path,
                        fix="it should read `wandb_run: <id>` (the 8-character id of the run's W&B page)")
    if run is not None:
        out["wandb_run"] = str(run)
    steps = out.get("max_train_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise DataError(f"meta.yaml: max_train_steps is {steps!r}, not a whole number of steps", path=path,
                        fix="it should read `max_train_steps: <n>`")
    return out


def tensorboard_event_files(exp_dir: str | Path) -> list[Path]:
    """Every TensorBoard event file below the dir, sorted."""
    exp = Path(exp_dir)
    if not exp.is_dir():
        return []
    return sorted(p for p in exp.rglob(EVENTS_GLOB) if p.is_file())


@dataclass
class Experiment:
    """What one experiment dir holds, for status lines, select and the train marker."""

    path: str
    exists: bool
    config: dict[str, Any] | None
    meta: dict[str, Any] | None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    event_files: list[str] = field(default_factory=list)

    @property
    def wandb_run(self) -> str | None:
        return (self.meta or {}).get("wandb_run")

    @property
    def max_train_steps(self) -> int | None:
        value = (self.meta or {}).get("max_train_steps")
        return int(value) if value is not None else None

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints if c.step is not None]

    @property
    def last(self) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.is_last), None)

    @property
    def has_tensorboard(self) -> bool:
        return bool(self.event_files)

    def ready(self, now: float | None = None, settle_s: float = SETTLE_S) -> list[Checkpoint]:
        return [c for c in self.checkpoints if c.ready(now, settle_s)]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(wandb_run=self.wandb_run, max_train_steps=self.max_train_steps, steps=self.steps,
                 has_tensorboard=self.has_tensorboard)
        return d


def read_experiment(exp_dir: str | Path) -> Experiment:
    exp = Path(exp_dir)
    if not exp.is_dir():
        return Experiment(str(exp), False, None, None)
    return Experiment(str(exp), True, read_config(exp), read_meta(exp), list_checkpoints(exp),
                      [str(p) for p in tensorboard_event_files(exp)])


# ----------------------------------------------------------------------------- naming and resume


def experiment_dir_for(base_dir: str, project_name: str, experiment_name: str, timestamp: str) -> str:
    """SONIC's default ``${base_dir}/${project_name}/${experiment_name}-${timestamp}`` (§2.4)."""
    return os.path.join(base_dir, project_name, f"{experiment_name}-{timestamp}")


def strip_timestamp(experiment_dir: str | Path) -> str:
    """``.../pnp_table_x-20260601_120000`` -> ``.../pnp_table_x`` (unchanged without a timestamp)."""
    text = str(experiment_dir).rstrip("/")
    return _TIMESTAMP_SUFFIX.sub("", text)


def newest_sibling_last(experiment_dir: str | Path) -> str | None:
    """The newest ``<experiment_dir minus -YYYYmmdd_HHMMSS>-*/last.pt`` (by modification time, the
    timestamped name breaking ties), or None."""
    prefix = strip_timestamp(experiment_dir)
    found = []
    for p in glob.glob(glob.escape(prefix) + "-*/" + LAST):
        try:
            found.append((os.path.getmtime(p), p))
        except FileNotFoundError:
            continue
    return max(found)[1] if found else None


@dataclass(frozen=True)
class Resume:
    """What SONIC does for a ``checkpoint`` / ``resume`` / ``experiment_dir`` combination."""

    mode: str  # fresh | weights | warm | resume
    load: str | None  # the checkpoint file SONIC loads (None: random init)
    output_dir: str  # where it writes checkpoints, config.yaml, meta.yaml
    wandb_run: str | None  # the W&B id it reuses (meta.yaml of output_dir); None: a new W&B run
    load_exists: bool  # whether ``load`` is on disk now
    rule: str  # which §2.2 rule applied, in words

    @property
    def new_wandb_run(self) -> bool:
        return self.wandb_run is None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "new_wandb_run": self.new_wandb_run}


def _meta_run(output_dir: str) -> str | None:
    # A garbage meta.yaml is an error, not "no W&B id": reporting a new W&B run for a dir whose
    # meta.yaml SONIC cannot read would be a wrong answer.
    run = (read_meta(output_dir) or {}).get("wandb_run")
    return str(run) if run else None


def _inside(path: str, directory: str) -> bool:
    a, b = os.path.abspath(path), os.path.abspath(directory)
    return os.path.dirname(a) == b


def resolve_resume(experiment_dir: str | Path, checkpoint: str | Path | None = None, resume: bool = False, *,
                   experiment_dir_given: bool = True, sonic_root: str | Path | None = None) -> Resume:
    """SONIC's resume semantics (§2.2), as a pure function of the arguments and the files on disk.

    ``experiment_dir`` is the dir SONIC would otherwise write to: the ``++experiment_dir`` value
    (``experiment_dir_given=True``, what grail-cluster always passes) or SONIC's timestamped
    default (``experiment_dir_given=False``). Relative ``checkpoint`` paths are relative to
    ``sonic_root`` (SONIC runs from there).

    - ``checkpoint`` outside ``experiment_dir`` with ``resume=True``: **warm** start (the documented
      fine-tune recipe): weights and optimizer from it, a new output dir, a new W&B run.
    - ``checkpoint`` outside ``experiment_dir`` without ``resume=True``: **weights** only, with a
      fresh optimizer. ``checkpoint`` wins over ``resume`` for what is loaded.
    - ``checkpoint`` inside ``experiment_dir``: resume in place from it.
    - ``resume=True`` with only ``experiment_dir``: ``<experiment_dir>/last.pt``.
    - ``resume=True`` with neither: the newest ``<experiment_dir minus -YYYYmmdd_HHMMSS>-*/last.pt``;
      the run continues in that dir (which is what makes its ``meta.yaml`` W&B id the one reused).
      §2.2 does not say where it writes; this is the reading under which that rule makes sense.
    - Otherwise a fresh start.

    In every case an existing ``meta.yaml`` in the output dir makes the run reuse its ``wandb_run``.
    """
    out = os.path.abspath(str(experiment_dir))
    if checkpoint:
        ck = str(checkpoint)
        if not os.path.isabs(ck) and sonic_root is not None:
            ck = os.path.join(str(sonic_root), ck)
        ck = os.path.abspath(ck)
        if _inside(ck, out):
            return Resume("resume", ck, out, _meta_run(out), os.path.isfile(ck),
                          "checkpoint inside experiment_dir: resume in place")
        if not resume:
            return Resume("weights", ck, out, _meta_run(out), os.path.isfile(ck),
                          "checkpoint without resume=True: policy weights only, fresh optimizer, new output dir")
        return Resume("warm", ck, out, _meta_run(out), os.path.isfile(ck),
                      "resume=True with a checkpoint outside experiment_dir: warm start (weights + optimizer), "
                      "new output dir")
    if resume and experiment_dir_given:
        last = os.path.join(out, LAST)
        return Resume("resume", last, out, _meta_run(out), os.path.isfile(last),
                      "resume=True with experiment_dir: <experiment_dir>/last.pt")
    if resume:
        found = newest_sibling_last(out)
        if found:
            run_dir = os.path.dirname(found)
            return Resume("resume", found, run_dir, _meta_run(run_dir), True,
                          "resume=True without experiment_dir: newest <experiment_dir minus timestamp>-*/last.pt")
        return Resume("fresh", None, out, _meta_run(out), False,
                      f"resume=True but no {strip_timestamp(out)}-*/last.pt exists: nothing to resume")
    return Resume("fresh", None, out, _meta_run(out), False, "no checkpoint and no resume: fresh start")
