"""Offline W&B run dirs read back without a server: the ``run-<id>.wandb`` transaction log.

Leveldb-log framing around ``wandb_internal_pb2.Record`` protobufs (the wandb package's own schema),
so no ``wandb sync`` and no ``wandb leet`` binary is needed; ``reader="leet"`` uses
``wandb leet inspect --json`` instead.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import ConfigError, DataError
from grail_cluster.tools.data.io import require_dir

_LOG_HEADER = b":W&B"
_BLOCK = 32768
_REC_HEADER = 7  # crc32 (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_WANDB_CORRUPT_FIX = ("the file is corrupt: copy it again from where the run wrote it, or rank from the experiment "
                      "dir (--experiment_dir: TensorBoard events and eval/<step>/train/metrics_eval.json)")


def _note_torn(notes: list[str] | None, path: Path, pos: int, size: int) -> None:
    if notes is not None:
        notes.append(f"{path}: ends in a torn record at byte {pos} of {size} (a run still writing, or killed "
                     "mid-write); the records before it were read")


def _wandb_records(path: Path, notes: list[str] | None = None) -> Iterator[bytes]:
    """Payloads of a ``.wandb`` transaction log (leveldb log framing, 32 KiB blocks, 7-byte file header).

    A torn tail (a run still writing, or killed) ends the iteration with a note; a wrong file header, a
    record that cannot fit its block or a bad checksum is a DataError."""
    data = path.read_bytes()
    if not data:
        raise DataError("empty W&B transaction log (the run died before it wrote a record)", path=path,
                        fix="remove this run dir, or rank from the experiment dir (--experiment_dir)")
    if len(data) < 7 or data[:4] != _LOG_HEADER:
        raise DataError("not a W&B transaction log (bad header)", path=path,
                        fix="pass the offline-run-* dir that wandb wrote (it holds run-<id>.wandb)")
    pos, pending = 7, b""
    while pos + _REC_HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _REC_HEADER:  # zero padding at the end of a block
            pos += left_in_block
            continue
        crc, length, rtype = struct.unpack_from("<IHB", data, pos)
        start = pos + _REC_HEADER
        if length > left_in_block - _REC_HEADER:  # a fragment never crosses its block: the header is damaged
            raise DataError(f"W&B log record at byte {pos} claims {length} bytes, more than its block holds",
                            path=path, fix=_WANDB_CORRUPT_FIX)
        chunk = data[start:start + length]
        if len(chunk) < length:
            _note_torn(notes, path, pos, len(data))
            return
        if rtype == 0 and length == 0:
            pos += left_in_block  # padding
            continue
        if zlib.crc32(chunk, zlib.crc32(bytes([rtype]))) & 0xFFFFFFFF != crc:
            raise DataError(f"W&B log checksum mismatch at byte {pos}", path=path, fix=_WANDB_CORRUPT_FIX)
        pos = start + length
        if rtype == _FULL:
            yield chunk
        elif rtype == _FIRST:
            pending = chunk
        elif rtype == _MIDDLE:
            pending += chunk
        elif rtype == _LAST:
            yield pending + chunk
            pending = b""
    if pending or data[pos:].strip(b"\0"):  # a record begun but not finished
        _note_torn(notes, path, pos, len(data))


def _history_item_value(item: Any) -> Any:
    field = item.WhichOneof("value") if _has_value_oneof(item) else None
    if field in ("number", "integer", "boolean", "text"):
        return getattr(item, field)
    if field == "none":
        return None
    raw = item.json if field == "json" else item.value_json
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _has_value_oneof(item: Any) -> bool:
    return any(o.name == "value" for o in item.DESCRIPTOR.oneofs)


def _item_key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


class OfflineRun:
    """What one offline run dir holds: id, name, group, config, history rows."""

    def __init__(self, run_dir: Path, run_id: str, name: str, group: str, config: dict[str, Any],
                 history: list[dict[str, Any]], finished: bool):
        self.run_dir, self.id, self.name, self.group = run_dir, run_id, name, group
        self.config, self.history, self.finished = config, history, finished
        self.project = ""
        self.entity = ""
        self.notes: list[str] = []  # what the reader had to tolerate (a torn tail), for the user


def log_file(run_dir: Path) -> Path:
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise DataError("no run-<id>.wandb in this W&B run dir", path=run_dir,
                        fix="pass the dir wandb.init(dir=...) used, or one of its wandb/offline-run-* dirs")
    return logs[0]


def read_offline_run(run_dir: str | Path, reader: str = "protobuf") -> OfflineRun:
    """Read an offline W&B run dir (``offline-run-<time>-<id>``) back."""
    run_dir = Path(run_dir)
    log = log_file(run_dir)
    if reader == "leet":
        return _read_with_leet(run_dir, log)
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("reading offline W&B runs needs the wandb package",
                          fix="pip install 'grail-cluster[wandb]' (or pip install wandb)") from exc
    run = OfflineRun(run_dir, log.stem.removeprefix("run-"), "", "", {}, [], False)
    for payload in _wandb_records(log, run.notes):
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
            raise DataError(f"undecodable W&B record ({exc})", path=log,
                            fix="read it with a wandb version at least as new as the writer's") from exc
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.id = r.run_id or run.id
            run.name = r.display_name or run.name
            run.group = r.run_group or run.group
            run.project, run.entity = r.project, r.entity
            _apply_config(run.config, r.config)
        elif kind == "config":
            _apply_config(run.config, rec.config)
        elif kind == "history":
            run.history.append({_item_key(i): _history_item_value(i) for i in rec.history.item})
        elif kind == "exit":
            run.finished = rec.exit.exit_code == 0
    return run


def _apply_config(config: dict[str, Any], cfg: Any) -> None:
    for item in cfg.update:
        key = "/".join(item.nested_key) if item.nested_key else item.key
        try:
            config[key] = json.loads(item.value_json)
        except ValueError:
            config[key] = item.value_json
    for item in cfg.remove:
        config.pop("/".join(item.nested_key) if item.nested_key else item.key, None)


def _read_with_leet(run_dir: Path, log: Path) -> OfflineRun:
    cmd = ["wandb", "leet", "inspect", "--json", str(run_dir)]
    exe = Path(sys.executable).with_name("wandb")
    if exe.exists():
        cmd[0] = str(exe)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"could not run {' '.join(cmd)}: {exc}", fix="install wandb>=0.31 (it ships `wandb leet`)") from exc
    if proc.returncode != 0:
        raise DataError(f"`wandb leet inspect` failed: {proc.stderr.strip()[-500:]}", path=run_dir,
                        fix="check the run dir, or use the default protobuf reader")
    run = OfflineRun(run_dir, log.stem.removeprefix("run-"), "", "", {}, [], False)
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        kind = rec.get("type")
        if kind == "run":
            r = rec["run"]
            run.id = r.get("run_id", run.id)
            run.name = r.get("display_name", run.name)
            run.group = r.get("run_group", run.group)
            run.project, run.entity = r.get("project", ""), r.get("entity", "")
            run.config.update(r.get("config", {}).get("update", {}))
        elif kind == "config":
            run.config.update(rec["config"].get("update", {}))
        elif kind == "history":
            run.history.append(dict(rec["history"].get("item", {})))
        elif kind == "exit":
            run.finished = rec["exit"].get("exit_code", 0) == 0
    return run


def find_offline_runs(wandb_dir: str | Path) -> list[Path]:
    """Run dirs under ``wandb_dir``: itself, ``offline-run-*``/``run-*`` children, or ``wandb/`` children."""
    root = Path(wandb_dir)
    require_dir(root, "W&B dir", "pass the dir given to wandb.init(dir=...) (SONIC: /tmp), or one of its "
                                  "wandb/offline-run-* dirs")
    if list(root.glob("run-*.wandb")):
        return [root]
    found: list[Path] = []
    for base in (root, root / "wandb"):
        found += [p for p in sorted(base.glob("*run-*")) if p.is_dir() and list(p.glob("run-*.wandb"))]
    if not found:
        # A sweep's run dir: each point's experiment dir holds its own wandb/ (experiments/p000/wandb/...).
        found = sorted({p.parent for p in root.glob("*/*/wandb/*run-*/run-*.wandb")})
    if not found:
        raise DataError("no W&B run dirs (offline-run-*/run-<id>.wandb) here", path=root,
                        fix="pass the dir given to wandb.init(dir=...) (SONIC: /tmp), or its wandb/ subdir")
    return found

