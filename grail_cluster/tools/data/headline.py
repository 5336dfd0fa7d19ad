"""The numbers a person reads about a checkpoint: evaluated, succeeded, real success rate, exported.

Every summary (the run's web index and each viewer's header, ``status``, the demo's last lines)
takes them from :func:`checkpoint_headline`, which counts the eval shards' ``metrics_eval.json``
through the same :func:`grail_cluster.tools.data.summarize.summarize_step` as ``summarize``: every motion
of every ``phase1_shard_*`` of the step, success = not terminated (contracts §4.1, §5.2), never W&B's
subset and never the merged library, which holds only the successes that passed the export filter
and so would divide the exported motions by themselves. ``exported`` is reported beside them: with
``min_progress`` or ``obj_pos_threshold`` it is less than ``succeeded``.

A step whose shards are not all readable gets ``partial: true`` and its text says ``n of N shards``:
a rate over some shards is never shown as the checkpoint's.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from grail_cluster.tools.data.summarize import summarize_step

EXPORT_MANIFEST = "export_manifest.json"
_SHARD_RE = re.compile(r"^phase1_shard_(\d+)$")
_STEP_RE = re.compile(r"^step_(\d+)$")


def _eval_shards(eval_step_dir: Path) -> dict[int, Path]:
    """rank -> ``phase1_shard_<rank>`` dir of one ``eval/step_*`` dir."""
    shards: dict[int, Path] = {}
    try:
        entries = list(os.scandir(eval_step_dir))
    except OSError:
        return shards
    for entry in entries:
        m = _SHARD_RE.match(entry.name)
        if m and entry.is_dir():
            shards[int(m.group(1))] = Path(entry.path)
    return shards


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def checkpoint_headline(eval_step_dir: str | Path, *, step: int | None = None, num_shards: int = 0,
                        merged: str | Path | None = None, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """The headline of one checkpoint step.

    ``eval_step_dir``: ``<exp>/eval/step_<S>`` holding ``phase1_shard_<r>/metrics_eval.json``;
    ``num_shards``: how many shards the eval was planned with (0: as many as are found);
    ``merged``: the merged (or single-shard export) library whose ``export_manifest.json`` says how
    many motions were exported; ``cache``: per-shard rows by file (size, mtime), see :func:`run_headlines`.
    """
    eval_step_dir = Path(eval_step_dir)
    if step is None:
        m = _STEP_RE.match(eval_step_dir.name)
        step = int(m.group(1)) if m else None
    row = summarize_step(step if step is not None else -1, _eval_shards(eval_step_dir), num_shards, cache)
    exported = None
    if merged is not None:
        man = read_manifest(Path(merged) / EXPORT_MANIFEST)
        count = man.get("exported_count") if man else None
        exported = count if isinstance(count, int) and not isinstance(count, bool) else None
    partial = row["shards_ok"] < row["num_shards"] or row["num_shards"] == 0
    return {
        "step": step,
        "evaluated": row["total_motions"],
        "succeeded": row["total_success"],
        "success_rate": row["real_success_rate"],
        "exported": exported,
        "num_shards": row["num_shards"],
        "shards_ok": row["shards_ok"],
        "shards_missing": row["shards_missing"],
        "shards_parse_error": row["shards_parse_error"],
        "partial": partial,
        # Keys evaluated in two shards (stale shards of another num_shards) are counted twice.
        "duplicate_motions": row.get("duplicate_motions", 0),
        "eval_dir": str(eval_step_dir),
        "merged": str(merged) if merged is not None else None,
    }


def library_headline(library: str | Path) -> dict[str, Any] | None:
    """The headline of the checkpoint an exported library came from, or None for a library that no
    export wrote (no ``export_manifest.json``).

    A merged library (``num_shards`` in its manifest) finds its eval step dir through the shard
    manifests' ``source_eval_dir`` (GRAIL writes it), else through GRAIL's layout
    ``<exp>/exported/step_<S>/merged`` -> ``<exp>/eval/step_<S>``; a single shard's export reads
    the one eval shard it names.
    """
    root = Path(library)
    man = read_manifest(root / EXPORT_MANIFEST)
    if man is None:
        return None
    step = man.get("step") if isinstance(man.get("step"), int) else None
    num_shards = man.get("num_shards")
    if isinstance(num_shards, int) and not isinstance(num_shards, bool) and num_shards > 0:
        step_dir = root.parent
        sources = []
        for shard in sorted(step_dir.glob("shard_*")):
            src = (read_manifest(shard / EXPORT_MANIFEST) or {}).get("source_eval_dir")
            if isinstance(src, str):
                sources.append(Path(src).parent)
        eval_step = sources[0] if sources else step_dir.parent.parent / "eval" / step_dir.name
        return checkpoint_headline(eval_step, step=step, num_shards=num_shards, merged=root)
    src = man.get("source_eval_dir")
    if not isinstance(src, str):
        return None
    shard_dir = Path(src)
    h = checkpoint_headline(shard_dir.parent, step=step, num_shards=0, merged=root)
    # One shard's export: count only that shard (its siblings belong to other libraries).
    row = summarize_step(h["step"] if h["step"] is not None else -1, {0: shard_dir}, 1)
    h.update(evaluated=row["total_motions"], succeeded=row["total_success"], success_rate=row["real_success_rate"],
             num_shards=1, shards_ok=row["shards_ok"], shards_missing=row["shards_missing"],
             shards_parse_error=row["shards_parse_error"], partial=row["shards_ok"] < 1, eval_dir=str(shard_dir))
    return h


def rate_text(h: dict[str, Any]) -> str:
    """``18/24 = 75.0%`` (``-`` when nothing was evaluated)."""
    rate = h.get("success_rate")
    pct = "-" if rate is None else f"{100 * rate:.1f}%"
    return f"{h['succeeded']}/{h['evaluated']} = {pct}"


def partial_text(h: dict[str, Any]) -> str:
    """Empty for a complete step; else which shards the numbers cover."""
    if not h.get("partial"):
        return ""
    return (f"PARTIAL: {h['shards_ok']} of {h['num_shards']} eval shards read "
            f"({h['shards_missing']} missing, {h['shards_parse_error']} unreadable); the rate covers those shards only")


def headline_text(h: dict[str, Any]) -> str:
    """One line: ``step 1000: evaluated 24, succeeded 18/24 = 75.0%, exported 16 (3/3 shards)``."""
    step = "?" if h.get("step") is None else h["step"]
    text = f"step {step}: evaluated {h['evaluated']}, succeeded {rate_text(h)}"
    if h.get("exported") is not None:
        text += f", exported {h['exported']}"
    text += f" ({h['shards_ok']}/{h['num_shards']} shards)"
    notes = [partial_text(h)]
    if h.get("duplicate_motions"):
        notes.append(f"{h['duplicate_motions']} motion(s) evaluated in more than one shard are counted twice "
                     "(`grail-cluster summarize` names them)")
    return "; ".join([text, *filter(None, notes)])
