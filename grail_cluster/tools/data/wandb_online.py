"""Eval rows of online W&B runs through ``wandb.Api()`` (or an injected stand-in)."""

from __future__ import annotations

from typing import Any

from grail_cluster.core.errors import ConfigError, DataError, GrailError
from grail_cluster.tools.data.select_rank import (
    EVAL_STEP,
    MPJPE_G,
    MPJPE_L,
    OBJ_POS,
    SR,
    eval_rows,
)


def run_path(run: Any) -> str:
    path = getattr(run, "path", None)
    if isinstance(path, (list, tuple)):
        return "/".join(str(p) for p in path)
    if isinstance(path, str):
        return path
    return "/".join(str(x) for x in (getattr(run, "entity", ""), getattr(run, "project", ""), run.id))


W_STEP = "_step"  # W&B's own row counter: the API puts it (its default x axis) in every history row
_TIEBREAKS = (MPJPE_L, MPJPE_G, OBJ_POS)


def online_history(run: Any, samples: int) -> list[dict[str, Any]]:
    """Eval rows of an online run: the success rate and eval step, each tiebreak metric joined on ``_step``.

    ``Run.history(keys=[...])`` returns only the rows that hold *every* requested key (wandb/wandb issues
    2266, 1742, 5391; its own ``scan_history`` docstring says so). GRAIL's single five-key query therefore
    finds no rows at all for a run that never logs one metric (a terrain run has no ``obj_pos_error``).
    So the rows that can rank (success rate + eval step) are asked for alone, and each tiebreak metric
    with them in a query of its own; a metric a run never logs is then just missing, as offline."""
    def query(keys: list[str]) -> list[dict[str, Any]]:
        return [dict(r) for r in run.history(samples=samples, pandas=False, keys=keys)]

    def join_key(r: dict[str, Any]) -> Any:
        # Without _step (an API that leaves it out) the eval step is the next best join key.
        return r.get(W_STEP, r.get(EVAL_STEP))

    rows = {join_key(r): r for r in query([SR, EVAL_STEP])}
    for metric in _TIEBREAKS:
        for r in query([SR, EVAL_STEP, metric]):
            if join_key(r) in rows and metric in r:
                rows[join_key(r)][metric] = r[metric]
    return list(rows.values())


def wandb_api(api: Any) -> Any:
    """The given API object (tests inject a stand-in), else ``wandb.Api()``."""
    if api is not None:
        return api
    try:
        import wandb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("the W&B API needs the wandb package", fix="pip install wandb") from exc
    try:
        return wandb.Api()
    except Exception as exc:  # noqa: BLE001 - wandb raises many kinds (no key, no network)
        raise DataError(f"cannot use the W&B API: {exc}",
                        fix="wandb login, or read offline runs (--wandb_dir), the experiment dir (--experiment_dir) "
                            "or a sweep's run dir (--group RUN_DIR)") from exc



def online_source(api: Any, run: str | None, group: str | None, entity: str, project: str,
                   samples: int) -> tuple[Any, list[dict[str, Any]]]:
    api = wandb_api(api)
    try:
        if run is not None:
            path = run if "/" in run else f"{entity}/{project}/{run}"
            chosen = api.run(path)
            return chosen, online_history(chosen, samples)
        runs = list(api.runs(f"{entity}/{project}", filters={"group": group}))
        if not runs:
            raise DataError(f"no W&B runs in group {group!r} of {entity}/{project}",
                            fix="check --group, --entity and --project")
        best = None
        for r in runs:
            hist = online_history(r, samples)
            score = (len(eval_rows(hist)), getattr(r, "state", "") == "finished")
            if best is None or score > best[0]:
                best = (score, r, hist)
        return best[1], best[2]
    except GrailError:
        raise
    except Exception as exc:  # noqa: BLE001 - wandb.errors.CommError and friends
        raise DataError(f"W&B API request failed: {exc}",
                        fix="check the run/group path and your network, or use --wandb_dir / --experiment_dir") from exc

