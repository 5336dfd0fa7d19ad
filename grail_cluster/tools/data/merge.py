"""``grail-cluster merge``: merge the export shards of one step into one motion library.

Contract (grail-contracts.md §5.4, §5.5, §1.5, §1.7): reads
``<exp>/exported/step_<step>/shard_<r>/`` for r in 0..N-1 and writes
``<exp>/exported/step_<step>/merged/{robot,objects,meta,object_usd,vis}`` plus a merged
``export_manifest.json``.

- **First shard wins.** Every file that belongs to a motion key (``robot/ objects/ meta/``
  pickles, ``object_usd/<key>.usd[a]``, both texture layouts, ``vis/<key>.mp4``) is taken from the
  lowest-rank shard holding that key, so a motion is never assembled from two shards. Other files
  (``object_usd/config.yaml``) are no-clobber in rank order. Each duplicate key is reported.
- **Soundness** (exit 1 when broken): every shard 0..N-1 present with a readable, self-consistent
  manifest that lists exactly its robot pickles; no shard pair with overlap / smaller size >= the
  threshold (stale shards of another ``num_shards``); no ``shard_<r>`` with r >= N on disk; no key
  in two shards (eval shards partition the library; a duplicate would be counted twice in the
  success rate); equal counts of robot/objects pickles and USDs (and videos when any shard has
  some); every file as its shard's export recorded it (sha256 from the shard manifest's
  ``outputs``; shards without hashes, e.g. GRAIL's, get a truncated-pickle check). Each finding
  names the file and the fix.
- **Only sound results at the final path.** A sound merge is published at ``merged/``. An unsound
  one goes to ``merged.unsound/`` (manifest ``"sound": false`` with ``problems``/``findings``),
  never to ``merged/``; ``--allow_unsound`` writes it to ``merged/`` for a user who insists (the
  manifest still says unsound, exit code still 1). A previous ``merged/`` is kept beside an unsound
  result only when it is a sound merge of exactly the shard manifests on disk now (its manifest's
  ``inputs`` digests match): it is still the right answer for those shards. Otherwise it is moved
  to ``merged.superseded/`` (``.2``, ... if taken), so nothing at ``merged/`` looks like the result
  of this merge. A sound merge (or ``--allow_unsound``) removes a stale ``merged.unsound/``.
- **Atomic:** the tree is built in a hidden temp dir next to the output and renamed into place;
  an error leaves no half-merged dir (and any previous merge untouched).
- **Hard links** where the file system allows (falling back to copies per file system), or
  copies with ``link=False``. Hard-linked files share their inode with the shard's file: editing
  one edits the other.
- **Deterministic:** sorted iteration everywhere and no timestamps, so the same inputs give a
  byte-identical tree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS, ConfigError, DataError
from grail_cluster.tools.data.io import raise_if_disk_full, replace_dir, write_json
from grail_cluster.tools.data.merge_files import (
    FIX_RERUN,
    UNSOUND_SUFFIX,
    Findings,
    Placer,
    count_files,
    hash_all,
    input_digests,
    pickle_truncated,
    settle_previous,
)
from grail_cluster.tools.data.merge_scan import (
    MANIFEST,
    PLACEHOLDER,
    SHARD_RE,
    SUBDIRS,
    Shard,
    find_step_dir,
    scan_shard,
    stem_key,
    walk_files,
)


def merge_step(
    exp_dir: str | Path,
    step: int | str,
    num_shards: int = 5,
    source_data: str | Path | None = None,
    output: str | Path | None = None,
    link: bool = True,
    overlap_threshold: float = 0.5,
    provenance: dict[str, Any] | None = None,
    allow_unsound: bool = False,
    retry: str = "run the merge again",
) -> dict[str, Any]:
    """Merge the export shards of ``step``; returns the report (``report["sound"]`` is the verdict).

    A sound merge is published at ``output`` (default ``<step>/merged``). An unsound one goes to
    ``<output>.unsound`` with its manifest saying why, unless ``allow_unsound`` (it then lands at
    ``output``, still marked ``"sound": false``). See :func:`settle_previous` for what happens to a
    previous merge at ``output``.

    ``provenance`` (the run's ``provenance.json``: SONIC commit, library and BPS hashes, config) is
    copied into the merged ``export_manifest.json`` under ``provenance``, so a merged library says
    what produced it wherever it is copied to.

    Raises DataError when there is nothing to merge (no step dir, no source robot/) or the disk is full
    (its fix ends with ``retry``), ConfigError for bad arguments; in each case nothing is written.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"--num_shards must be a positive integer, got {num_shards!r}")
    if not 0 < overlap_threshold <= 1:
        raise ConfigError(f"--overlap_threshold must be in (0, 1], got {overlap_threshold!r}")
    exp_dir = Path(exp_dir)
    step_dir = find_step_dir(exp_dir, step)
    final = Path(output) if output is not None else step_dir / "merged"
    src_root = Path(source_data) if source_data is not None else None
    if src_root is not None and not (src_root / "robot").is_dir():
        raise DataError("source library has no robot/ directory", path=src_root,
                        fix="--source_data must be the library the evaluation ran on")

    shards = [scan_shard(r, step_dir / f"shard_{r}") for r in range(num_shards)]
    findings = Findings()
    warnings: list[str] = []

    missing = [s.rank for s in shards if s.status == "missing"]
    if missing:
        findings.add(f"missing shards: {missing}", path=step_dir,
                     fix=f"export shard(s) {missing} (or pass the --num_shards the eval used), then merge again")
    for s in shards:
        if s.status == "no_manifest":
            findings.add(f"shard_{s.rank} has no {MANIFEST} (export incomplete?)", path=s.path)
        elif s.status == "bad_manifest":
            findings.add(s.error.problem, path=s.error.path, fix=s.error.fix or FIX_RERUN)
        if s.manifest is not None:
            listed = {m["motion_key"] for m in s.manifest["exported_motions"]}
            if listed != s.robot_keys:
                findings.add(
                    f"shard_{s.rank}: {MANIFEST} lists {len(listed)} motions but robot/ holds "
                    f"{len(s.robot_keys)} ({len(listed - s.robot_keys)} listed without a pickle, "
                    f"{len(s.robot_keys - listed)} pickles not listed)", path=s.path / MANIFEST)
            outputs = s.manifest.get("outputs")
            if isinstance(outputs, dict):
                gone = sorted(set(outputs) - set(s.files) - {MANIFEST})
                gone = [g for g in gone if not g.startswith(".")]
                if gone:
                    findings.add(f"{len(gone)} file(s) listed in {MANIFEST} are missing (e.g. {gone[0]})",
                                 path=s.path)
            else:
                warnings.append(f"shard_{s.rank}: {MANIFEST} has no `outputs` hashes (not written by "
                                f"grail-cluster); its files are checked for truncation only")

    # Stale shards: beyond N on disk, or a pair overlapping too much (another num_shards).
    stale: list[dict[str, Any]] = []
    beyond = sorted(int(m.group(1)) for p in step_dir.iterdir()
                    if (m := SHARD_RE.match(p.name)) and p.is_dir() and int(m.group(1)) >= num_shards)
    for r in beyond:
        stale.append({"shards": [r], "reason": f"shard_{r} exists but --num_shards is {num_shards}"})
    present = [s for s in shards if s.status != "missing"]
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            small = min(len(a.robot_keys), len(b.robot_keys))
            if not small:
                continue
            overlap = len(a.robot_keys & b.robot_keys)
            ratio = overlap / small
            if ratio >= overlap_threshold:
                stale.append({"shards": [a.rank, b.rank], "overlap": overlap, "ratio": round(ratio, 6),
                              "reason": f"shard_{a.rank} and shard_{b.rank} share {overlap} of "
                                        f"{small} motions ({ratio:.0%} >= {overlap_threshold:.0%})"})
    if stale:
        findings.add(f"stale shards: {'; '.join(s['reason'] for s in stale)}", path=step_dir,
                     fix="remove the shard dirs left by an earlier run with another --num_shards (or pass the "
                         "right --num_shards), then merge again")

    # Owners: the lowest rank holding a key wins it.
    owner: dict[str, int] = {}
    holders: dict[str, list[int]] = {}
    for s in present:
        for k in sorted(s.all_keys):
            owner.setdefault(k, s.rank)
            holders.setdefault(k, []).append(s.rank)
    duplicates = [{"key": k, "kept_from": rs[0], "dropped_from": rs[1:]}
                  for k, rs in sorted(holders.items()) if len(rs) > 1]
    if duplicates:
        # Eval shards partition the library: a key in two shards means one of them is from another
        # run, and summing total_motions_evaluated would count that motion twice.
        d = duplicates[0]
        findings.add(f"{len(duplicates)} motion key(s) exported by more than one shard (e.g. {d['key']} in "
                     + ", ".join(f"shard_{r}" for r in [d["kept_from"], *d["dropped_from"]])
                     + "); the success rate would count them twice", path=step_dir,
                     fix="re-export the shards named from the same eval run (each motion is in exactly one "
                         "shard), then merge again")

    # Plan: destination -> source.
    plan: dict[str, Path] = {}
    origin: dict[str, Shard] = {}
    deferred: list[tuple[str, Path, Shard]] = []
    dropped_files = 0
    root_extras: dict[str, Path] = {}
    for s in present:
        for rel in s.files:
            key = s.file_key[rel]
            src = s.path / rel
            if rel == f"object_usd/{PLACEHOLDER}":
                root_extras.setdefault(PLACEHOLDER, src)  # relocated to the root (§1.7)
            elif key is None:
                deferred.append((rel, src, s))
            elif owner[key] == s.rank:
                if rel not in plan:
                    plan[rel], origin[rel] = src, s
            else:
                dropped_files += 1
    for rel, src, s in deferred:
        if rel in plan:
            dropped_files += 1
        else:
            plan[rel], origin[rel] = src, s
    terrain = False
    if src_root is not None:
        for base in (src_root, src_root / "object_usd"):
            if (base / PLACEHOLDER).is_file():
                root_extras[PLACEHOLDER] = base / PLACEHOLDER
                terrain = True
                break
        if terrain:
            for base in (src_root, src_root / "object_usd"):
                if (base / "config.yaml").is_file():
                    root_extras["config.yaml"] = base / "config.yaml"
                    break
    for name, src in root_extras.items():
        plan[name] = src

    # Checks on what will be written.
    rels = sorted(plan)
    counts = count_files(rels)
    any_videos = any(s.has_videos for s in present)
    checked = ["robot", "objects", "object_usd"] + (["vis"] if any_videos else [])
    if len({counts[c] for c in checked}) > 1:
        findings.add("count mismatch: " + ", ".join(f"{c}={counts[c]}" for c in checked), path=step_dir,
                     fix="every exported motion needs robot/, objects/ and object_usd/ files (and a video when "
                         "any shard has videos); re-run the export of the shard(s) short of files")
    unhashed = [rel for rel in rels if rel in origin and not isinstance((origin[rel].manifest or {}).get("outputs"), dict)
                and rel.endswith(".pkl")]
    truncated = [rel for rel in unhashed if pickle_truncated(plan[rel])]
    for rel in truncated[:20]:
        findings.add("truncated pickle (it does not end with the pickle STOP opcode)", path=plan[rel])
    if len(truncated) > 20:
        findings.add(f"... and {len(truncated) - 20} more truncated pickles", path=step_dir)

    unique_keys = sorted(set().union(*(s.robot_keys for s in present)) if present else set())
    coverage = source_total = None
    if src_root is not None:
        source_total = sum(1 for rel in walk_files(src_root / "robot")
                           if rel.endswith(".pkl") and rel.rsplit("/", 1)[-1] != "metadata.pkl")
        coverage = round(len(unique_keys) / source_total, 6) if source_total else None
        if source_total:
            src_keys = {rel.rsplit("/", 1)[-1][:-4] for rel in walk_files(src_root / "robot")}
            unknown = [k for k in unique_keys if k not in src_keys]
            if unknown:
                warnings.append(f"{len(unknown)} merged keys are not in the source library "
                                f"(e.g. {unknown[0]})")

    # Manifest entries from the kept copies.
    motions: dict[str, dict[str, Any]] = {}
    for s in present:
        if s.manifest is None:
            continue
        for m in s.manifest["exported_motions"]:
            k = m["motion_key"]
            if owner.get(k, s.rank) == s.rank and k not in motions:
                motions[k] = m
    manifests = [s.manifest for s in present if s.manifest is not None]
    evaluated = sum(m["total_motions_evaluated"] for m in manifests)
    exported = len(motions)
    success_rate = round(exported / evaluated, 6) if evaluated else None
    rejected = [dict(r, shard=s.rank) for s in present if s.manifest is not None
                for r in (s.manifest.get("rejected") or []) if isinstance(r, dict)]
    hand_kinds = {f"shard_{s.rank}": str(s.manifest.get("hand_action_kind") or "unknown")
                  for s in present if s.manifest is not None}
    seen = sorted(set(hand_kinds.values()) - {"none"})
    hand_kind = seen[0] if len(seen) == 1 else ("mixed" if seen else "none")
    shard_rows = []
    for s in shards:
        kept = sum(1 for k in s.robot_keys if owner.get(k) == s.rank)
        shard_rows.append({"rank": s.rank, "status": s.status, "exported": len(s.robot_keys), "kept": kept})
    for r in beyond:
        robot = step_dir / f"shard_{r}" / "robot"
        n = sum(1 for rel in walk_files(robot) if stem_key("robot/" + rel)) if robot.is_dir() else 0
        shard_rows.append({"rank": r, "status": "stale", "exported": n, "kept": 0})

    placer = Placer(link)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for sub in SUBDIRS:
            (tmp / sub).mkdir()
        made: set[str] = set()
        for rel in rels:
            parent = rel.rpartition("/")[0]
            if parent and parent not in made:
                (tmp / parent).mkdir(parents=True, exist_ok=True)
                made.add(parent)
            placer.place(plan[rel], tmp / rel)
        digests = dict(zip(rels, hash_all([tmp / rel for rel in rels]), strict=True))
        # The shard's own export recorded every file's hash: a file changed (or cut short) since then
        # must not pass into the merged library unnoticed.
        changed = [rel for rel in rels if rel in origin
                   and isinstance(want := (origin[rel].manifest or {}).get("outputs"), dict)
                   and want.get(rel) not in (None, digests[rel])]
        for rel in changed[:20]:
            findings.add(f"sha256 differs from {origin[rel].path.name}/{MANIFEST} (changed or truncated after "
                         f"the export)", path=plan[rel])
        if len(changed) > 20:
            findings.add(f"... and {len(changed) - 20} more files whose sha256 differs", path=step_dir)

        sound = not findings.items
        manifest: dict[str, Any] = {
            "num_shards": num_shards,
            "step": int(step),
            "source_data_dir": str(src_root) if src_root is not None else None,
            "total_motions_evaluated": evaluated,
            "exported_count": exported,
            "skipped_no_trajectory": sum(m.get("skipped_no_trajectory", 0) for m in manifests),
            "rejected_count": len(rejected),
            "rejected": rejected,
            "success_rate": success_rate,
            "exported_motions": [motions[k] for k in sorted(motions)],
            "duplicates": duplicates,
            "missing_shards": missing,
            "stale_shards": stale,
            "coverage": coverage,
            "source_motions": source_total,
            "shards": shard_rows,
            "counts": counts,
            "hand_action_kind": hand_kind,
            "hand_action_kinds": hand_kinds,
            "inputs": input_digests(step_dir, present),
            "sound": sound,
            "allowed_unsound": bool(allow_unsound and not sound),
            "problems": findings.rendered(),
            "findings": findings.items,
        }
        if provenance is not None:
            manifest["provenance"] = provenance
        manifest["outputs"] = digests
        write_json(tmp / MANIFEST, manifest)

        unsound_dir = final.with_name(final.name + UNSOUND_SUFFIX)
        previous = None
        if sound or allow_unsound:
            dest = final
        else:
            dest = unsound_dir
            previous = settle_previous(final, step_dir)
        replace_dir(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(exc, final, f"the merge of step {step}", retry)
        raise
    if dest == final and unsound_dir.exists():
        shutil.rmtree(unsound_dir)  # an older unsound attempt, superseded by this result

    mode = "copy" if not placer.linked else ("link" if not placer.copied else "mixed")
    return {
        "sound": sound,
        "output": str(dest),
        "published": "final" if dest == final else "unsound",
        "final_path": str(final),
        "previous": previous,
        "step_dir": str(step_dir),
        "mode": mode,
        "linked": placer.linked,
        "copied": placer.copied,
        "files": len(rels),
        "dropped_files": dropped_files,
        "terrain": terrain,
        "unique_keys": len(unique_keys),
        "warnings": warnings,
        **{k: v for k, v in manifest.items() if k not in ("exported_motions", "outputs", "provenance", "inputs")},
        "provenance_recorded": provenance is not None,
    }


# ----------------------------------------------------------------------------- CLI


def _print_report(rep: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from grail_cluster.core.console import make_console

    con = make_console()
    t = Table(title=f"merge step {rep['step']}: {rep['num_shards']} shards")
    for col in ("shard", "status", "exported", "kept"):
        t.add_column(col)
    for row in rep["shards"]:
        style = "" if row["status"] == "ok" else "red"
        t.add_row(str(row["rank"]), f"[{style}]{row['status']}[/]" if style else row["status"],
                  str(row["exported"]), str(row["kept"]))
    con.print(t)
    c = rep["counts"]
    con.print(f"merged: {rep['unique_keys']} motions, robot={c['robot']} objects={c['objects']} "
              f"object_usd={c['object_usd']} vis={c['vis']} ({rep['files']} files, {rep['mode']}: "
              f"{rep['linked']} linked, {rep['copied']} copied)")
    sr = rep["success_rate"]
    # GRAIL's manifest calls this success_rate, but it is after the export filter (min_progress,
    # obj_pos_threshold): the success rate is not-terminated over every shard (`summarize`).
    con.print(f"exported / evaluated: {rep['exported_count']}/{rep['total_motions_evaluated']}"
              + (f" = {sr:.2%}" if sr is not None else " (nothing evaluated)")
              + " (after the export filter; the success rate: grail-cluster summarize)")
    if rep["coverage"] is not None:
        con.print(f"coverage: {rep['unique_keys']}/{rep['source_motions']} = {rep['coverage']:.2%} of the source")
    if rep["terrain"]:
        con.print(f"terrain: {PLACEHOLDER} (and config.yaml if any) copied to the merged root")
    if rep["duplicates"]:
        con.print(f"[yellow]{len(rep['duplicates'])} duplicate keys across shards (first shard kept):[/]")
        for d in rep["duplicates"][:20]:
            con.print(f"  {escape(d['key'])}: kept shard_{d['kept_from']}, dropped from "
                      + ", ".join(f"shard_{r}" for r in d["dropped_from"]))
        if len(rep["duplicates"]) > 20:
            con.print(f"  ... and {len(rep['duplicates']) - 20} more (see --json)")
    if rep["rejected_count"]:
        con.print(f"rejected by the export (counted as failed): {rep['rejected_count']} motion(s)")
    if rep["hand_action_kind"] not in ("none", "unknown"):
        con.print(f"hand actions: {rep['hand_action_kind']}")
    for w in rep["warnings"]:
        con.print(f"[yellow]warning:[/] {escape(w)}")
    for f in rep["findings"]:
        # One line per problem with the path whole (grep-able in a log), then its fix.
        con.print(f"[red]problem:[/] {escape(f['path'] + ': ' if f['path'] else '')}{escape(f['problem'])}")
        con.print(f"  fix: {escape(f['fix'])}")
    prev = rep.get("previous")
    if prev and prev["action"] == "moved":
        con.print(f"the previous {escape(rep['final_path'])} was moved to {escape(prev['path'])} ({prev['why']})")
    elif prev:
        con.print(f"the previous {escape(rep['final_path'])} is kept: {prev['why']}; it is not this merge's result")
    if rep["sound"]:
        verdict = "[green]PASS[/]"
    elif rep["published"] == "final":
        verdict = "[red]FAIL[/] (written to the final path because of --allow_unsound; its manifest says unsound)"
    else:
        verdict = (f"[red]FAIL[/] (unsound: written for inspection only, not to {escape(rep['final_path'])}; "
                   "--allow_unsound writes it there anyway)")
    con.print(f"{verdict} -> {escape(rep['output'])}")


def _read_provenance_arg(value: str | None) -> dict[str, Any] | None:
    """``--provenance``: a run dir (its provenance.json) or a JSON file."""
    if not value:
        return None
    path = Path(value)
    if path.is_dir():
        path = path / "provenance.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("provenance file not found", path=path,
                        fix="pass the run dir (it holds provenance.json once planned) or the JSON file itself") from None
    except ValueError as exc:
        raise DataError(f"provenance file is not valid JSON: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise DataError("provenance file does not hold a JSON object", path=path)
    return data


def _cmd_merge(args: argparse.Namespace) -> int:
    rep = merge_step(args.exp_dir, args.step, num_shards=args.num_shards, source_data=args.source_data,
                     output=args.output, link=not args.copy, overlap_threshold=args.overlap_threshold,
                     provenance=_read_provenance_arg(args.provenance), allow_unsound=args.allow_unsound)
    if args.json:
        import sys

        from grail_cluster.tools.data.io import dumps_json

        sys.stdout.write(dumps_json(rep))
    else:
        _print_report(rep)
    return EXIT_OK if rep["sound"] else EXIT_PROBLEMS


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``merge`` subcommand (sets ``func``)."""
    p = subparsers.add_parser(
        "merge", help="merge the export shards of one step into one library (exit 1 if unsound)",
        description="Merge <exp>/exported/step_<S>/shard_<r>/ (r < N) into .../merged/: first shard wins. "
                    "Missing, stale or overlapping shards, duplicate keys, count mismatches and files changed since "
                    "their export make the merge unsound (exit 1): it is then written to .../merged.unsound/ "
                    "instead, never to merged/ (unless --allow_unsound).")
    p.add_argument("--exp_dir", "--exp-dir", dest="exp_dir", required=True, help="experiment dir holding exported/")
    p.add_argument("--step", required=True, help="checkpoint step (step_001000 and step_1000 both accepted)")
    p.add_argument("--num_shards", "--num-shards", dest="num_shards", type=int, default=5)
    p.add_argument("--source_data", "--source-data", dest="source_data",
                   help="the evaluated source library (coverage; terrain placeholder + config.yaml)")
    p.add_argument("--output", help="default <exp>/exported/step_<S:06d>/merged")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--link", dest="copy", action="store_false", default=False,
                   help="hard-link files where the file system allows (default)")
    g.add_argument("--copy", dest="copy", action="store_true", help="always copy (independent files)")
    p.add_argument("--overlap_threshold", "--overlap-threshold", dest="overlap_threshold", type=float, default=0.5)
    p.add_argument("--provenance", help="run dir or provenance.json to copy into the merged export_manifest.json")
    p.add_argument("--allow_unsound", "--allow-unsound", dest="allow_unsound", action="store_true",
                   help="write an unsound merge to the final path anyway (default: <output>.unsound); its manifest "
                        "still says sound: false and the exit code is still 1")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_cmd_merge)
    return p

