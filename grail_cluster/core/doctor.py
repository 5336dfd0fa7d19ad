"""Pre-flight checks of a motion library: the seed article's checklist as data.

Each problem names the file (or the first few keys), what is wrong, and the fix. ``plan`` runs the
same checks and refuses to plan a library that SONIC would reject at start-up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from grail_cluster.core.errors import ConfigError
from grail_cluster.core.library import LibraryIndex
from grail_cluster.core.motion_checks import CHECKS

SEVERITIES = ("error", "warn", "info")
SHOW_KEYS = 5

# What each pipeline needs is in configs/pipeline/*.yaml (`needs:`); these are the defaults when
# doctor runs without a pipeline: only what every SONIC HOI config needs.
DEFAULT_NEEDS = {"objects": "error", "object_usd": "error", "bps": "warn", "hand_actions": "no",
                 "contacts": "warn", "table": "no"}
TERRAIN_NEEDS = {"objects": "warn", "object_usd": "error", "bps": "no", "hand_actions": "no",
                 "contacts": "no", "table": "no"}


@dataclass(frozen=True)
class Problem:
    severity: str  # error | warn | info
    check: str
    path: str
    problem: str
    fix: str
    count: int = 1
    motion: str = ""  # the motion key, when the problem is one motion's
    key: str = ""  # the array or field inside the file


def parse_allow(names: list[str] | str | None) -> frozenset[str]:
    """``--allow a,b`` / ``data.allow=[a,b]``: checks downgraded to warnings; only allowable ones."""
    if not names:
        return frozenset()
    if isinstance(names, str):
        names = [names]
    out = {n.strip() for item in names for n in str(item).split(",") if n.strip()}
    allowable = sorted(c.name for c in CHECKS.values() if c.allowable)
    for name in sorted(out):
        if name not in CHECKS:
            raise ConfigError(f"--allow {name}: no such check", fix=f"checks that may be allowed: {', '.join(allowable)}")
        if not CHECKS[name].allowable:
            raise ConfigError(f"--allow {name}: this check cannot be downgraded ({CHECKS[name].why})",
                              fix=f"fix the data; checks that may be allowed: {', '.join(allowable)}")
    return frozenset(out)


def _finding_problems(findings: list[dict[str, str]], allow: frozenset[str], motion_of: dict[int, str]) -> list[Problem]:
    """Content findings, grouped by check: the first few one per line, then a count of the rest."""
    by_check: dict[str, list[dict[str, str]]] = {}
    for f in findings:
        by_check.setdefault(f["check"], []).append(f)
    out: list[Problem] = []
    for check, items in by_check.items():
        severity = "warn" if check in allow else CHECKS[check].severity
        for f in items[:SHOW_KEYS]:
            out.append(Problem(severity, check, f["file"], f["problem"], f["fix"], motion=motion_of.get(id(f), ""),
                               key=f["key"]))
        if len(items) > SHOW_KEYS:
            rest = len(items) - SHOW_KEYS
            out.append(Problem(severity, check, str(Path(items[SHOW_KEYS]["file"]).parent),
                               f"{rest} more findings of check {check}",
                               "run `grail-cluster doctor --json` for every finding", rest))
    return out


def _keys_text(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    return shown + (f" … (+{len(keys) - SHOW_KEYS} more)" if len(keys) > SHOW_KEYS else "")


def _need(needs: dict[str, str], name: str) -> str | None:
    level = needs.get(name, "no")
    return None if level == "no" else level


def diagnose(index: LibraryIndex, needs: dict[str, str] | None = None, pipeline: str | None = None,
             allow: frozenset[str] = frozenset()) -> list[Problem]:
    """Every problem of the library; checks named in ``allow`` are reported as warnings."""
    problems = _diagnose(index, needs, pipeline)
    findings = list(index.findings)
    motion_of: dict[int, str] = {}
    for m in index.motions:
        for f in m.findings:
            findings.append(f)
            motion_of[id(f)] = m.key
    problems += _finding_problems(findings, allow, motion_of)
    return [Problem("warn", p.check, p.path, p.problem, p.fix, p.count, p.motion, p.key)
            if p.severity == "error" and p.check in allow else p for p in problems]


def all_findings(index: LibraryIndex, allow: frozenset[str] = frozenset()) -> list[dict[str, str]]:
    """Every content finding with its motion and severity (for ``--json``), not only the first few."""
    def severity(check: str) -> str:
        return "warn" if check in allow else CHECKS[check].severity

    rows = [{"severity": severity(f["check"]), "motion": "", **f} for f in index.findings]
    for m in index.motions:
        rows += [{"severity": severity(f["check"]), "motion": m.key, **f} for f in m.findings]
    return rows


def _diagnose(index: LibraryIndex, needs: dict[str, str] | None, pipeline: str | None) -> list[Problem]:
    terrain = index.layout == "terrain"
    needs = dict(needs or (TERRAIN_NEEDS if terrain else DEFAULT_NEEDS))
    root = Path(index.root)
    problems: list[Problem] = []
    add = problems.append
    motions = index.motions
    for_pipeline = f" for pipeline {pipeline}" if pipeline else ""

    if not motions:
        add(Problem("error", "robot", str(root / "robot"), "no robot/*.pkl files: the library is empty",
                    "point at the library root (the directory holding robot/ objects/ meta/)"))
        return problems

    if index.duplicates:
        add(Problem("error", "robot", str(root / "robot"),
                    f"{len(index.duplicates)} motion keys appear in more than one robot file: {_keys_text(index.duplicates)}",
                    "keep one file per motion key; keys are file stems and must be unique", len(index.duplicates)))

    empty = [m.key for m in motions if not m.error and not m.frames]
    if empty:
        add(Problem("error", "frames", str(root / "robot"), f"{len(empty)} motions have no frames: {_keys_text(empty)}",
                    "remove these motions or re-run retargeting", len(empty)))

    if (level := _need(needs, "objects")):
        missing = [m.key for m in motions if not m.has_objects]
        if missing:
            add(Problem(level, "paired", str(root / "objects"),
                        f"{len(missing)} robot keys have no objects/<key>.pkl: {_keys_text(missing)}",
                        "robot/ and objects/ must hold the same stems; re-run retargeting/process for these keys "
                        "or remove their robot pickles", len(missing)))
    for sub in ("objects", "meta"):
        orphans = index.orphans.get(sub) or []
        if orphans:
            add(Problem("warn", "paired", str(root / sub),
                        f"{len(orphans)} {sub}/ files have no robot pickle: {_keys_text(orphans)}",
                        f"remove the stray {sub}/ files or restore their robot/ pickles", len(orphans)))

    if (level := _need(needs, "table")):
        missing = [m.key for m in motions if not m.has_meta]
        if missing:
            add(Problem(level, "meta", str(root / "meta"),
                        f"{len(missing)} keys have no meta/<key>.pkl (table pose){for_pipeline}: {_keys_text(missing)}",
                        "table pipelines read table_pos/table_quat from meta/; re-run process for these keys", len(missing)))

    problems += _usd_problems(index, needs, terrain)

    if (level := _need(needs, "hand_actions")):
        missing = [m.key for m in motions if not m.error and not m.hand_actions]
        if missing:
            add(Problem(level, "hand_actions", str(root / "robot"),
                        f"{len(missing)} robot pickles have no hand_action_left/right{for_pipeline}: {_keys_text(missing)}",
                        "train on the _ha library written by grail.retargeting.process "
                        "(data/motion_lib/<name>_ha), not the plain retarget output", len(missing)))

    if (level := _need(needs, "contacts")):
        missing = [m.key for m in motions if not m.error and m.has_objects and not m.contacts]
        if missing:
            add(Problem(level, "contacts", str(root / "objects"),
                        f"{len(missing)} object pickles have no contact labels: {_keys_text(missing)}",
                        "re-run process.sh with --include_contact_points", len(missing)))

    # A pipeline that names BPS needs it for every motion, even with one shared USD (SONIC reads the
    # embedding per motion key); without a pipeline, only libraries with several objects are held to it.
    if (level := _need(needs, "bps")) and (pipeline or index.counts.get("object_usd", 0) > 1):
        problems += _bps_problems(index, level)

    kinds = Counter(m.hand_action_kind for m in motions if m.hand_action_kind)
    if len(kinds) > 1:
        add(Problem("warn", "hand-action-values", str(root / "robot"),
                    f"hand actions are mixed: {kinds['discrete']} discrete (-1/+1), {kinds['continuous']} continuous",
                    "a library should hold one kind: discrete from grail.retargeting.process, continuous from "
                    "GRAIL's upstream export; re-export one part"))
    conventions = Counter(m.root_rot for m in motions if not m.error)
    if len({c for c in conventions if c in ("wxyz", "xyzw")}) > 1:
        add(Problem("warn", "quaternions", str(root / "robot"),
                    f"root_rot conventions are mixed: {dict(conventions)}",
                    "retargeted/_ha libraries are wxyz, exported/released ones xyzw; do not mix them in one library"))
    elif conventions.get("ambiguous") or conventions.get("unknown"):
        n = conventions.get("ambiguous", 0) + conventions.get("unknown", 0)
        add(Problem("info", "quaternions", str(root / "robot"),
                    f"root_rot convention could not be told for {n} motions", "nothing to do unless you export these", n))
    return problems


def _usd_problems(index: LibraryIndex, needs: dict[str, str], terrain: bool) -> list[Problem]:
    root = Path(index.root)
    out: list[Problem] = []
    level = _need(needs, "object_usd")
    if not level:
        return out
    usd_dir = index.usd_dir or str(root / "object_usd")
    if index.counts.get("object_usd", 0) == 0:
        out.append(Problem("error", "object_usd", usd_dir, "object_usd/ holds no .usd files",
                           "copy the object USDs (and textures/) from the retarget output; for an _ha library pass "
                           "data.object_usd_dir=<non-_ha library>/object_usd"))
        return out
    if index.shared_usd and not terrain:
        out.append(Problem("info", "object_usd", index.shared_usd, "one USD shared by every motion", "nothing to do"))
    else:
        missing = [m.key for m in index.motions if not m.usd]
        if missing:
            what = "the terrain scan raises [TerrainAutoDiscover] ... have no matching USD" if terrain else \
                "SONIC skips them and then fails the Motion-USD pairing check"
            out.append(Problem("error", "object_usd", usd_dir,
                               f"{len(missing)} robot keys have no <key>.usd ({what}): {_keys_text(missing)}",
                               "add object_usd/<key>.usd for each key, or remove those motions", len(missing)))
    if terrain and not index.flat_placeholder:
        out.append(Problem("error", "terrain", str(root / "flat_placeholder.usd"),
                           "flat_placeholder.usd not found at the root or in object_usd/",
                           "copy flat_placeholder.usd to the library root, or set data.flat_usd_path=<file>"))
    return out


def _bps_problems(index: LibraryIndex, level: str) -> list[Problem]:
    root = Path(index.root)
    if not index.bps_dir:
        return [Problem(level, "bps", str(root / "bps"),
                        "no BPS directory (SONIC then feeds zero shape observations)",
                        "run compute_bps on the non-_ha library and pass data.bps_dir=<library>/bps (or --bps_dir)")]
    out: list[Problem] = []
    if not index.bps_basis:
        out.append(Problem(level, "bps", str(Path(index.bps_dir) / "_basis.npy"), "BPS basis _basis.npy is missing",
                           "re-run compute_bps; it writes _basis.npy beside the per-key embeddings"))
    missing = [m.key for m in index.motions if not m.bps]
    if missing:
        out.append(Problem(level, "bps", index.bps_dir,
                           f"{len(missing)} keys have no BPS embedding (<key>.npy; SONIC would use zeros): {_keys_text(missing)}",
                           "re-run compute_bps on the original motion library so every key has an embedding", len(missing)))
    return out


def has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def report(index: LibraryIndex, problems: list[Problem], allow: frozenset[str] = frozenset()) -> dict:
    conventions = Counter(m.root_rot for m in index.motions)
    return {
        "ok": not has_errors(problems),
        "library": index.root,
        "layout": index.layout,
        "num_motions": len(index.motions),
        "counts": index.counts,
        "usd_dir": index.usd_dir,
        "usd_dir_note": index.usd_dir_note,
        "bps_dir": index.bps_dir,
        "flat_placeholder": index.flat_placeholder,
        "root_rot": dict(conventions),
        "hand_action_kind": dict(Counter(m.hand_action_kind or "none" for m in index.motions)),
        "frames": {
            "total": sum(m.frames or 0 for m in index.motions),
            "min": min((m.frames for m in index.motions if m.frames), default=0),
            "max": max((m.frames for m in index.motions if m.frames), default=0),
        },
        "problems": [asdict(p) for p in problems],
        "findings": all_findings(index, allow),
        "allowed": sorted(allow),
    }
