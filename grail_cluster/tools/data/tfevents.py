"""Scalars of TensorBoard event files, read strictly (the TFRecord framing of ``events.out.tfevents.*``).

TensorBoard's own loader swallows every ``DataLossError``: a garbage file, or one corrupted in the
middle, reads as "no more events", so a ranking built on it silently loses the rows after the damage
and still exits 0. This reader tells the three cases apart:

- a clean file: every record read;
- a torn tail (the trainer is still writing, or was killed mid-record): the records before it are
  read and the tear is reported as a note, since that is what a live run looks like;
- anything else (a header checksum that does not match, a record that is not an ``Event``, a used
  record whose data checksum does not match): a :class:`DataError` naming the file and the byte.

Record framing (TFRecord): ``uint64 length``, ``uint32 masked_crc32c(length)``, ``data``,
``uint32 masked_crc32c(data)``. Every length header is checked; the data checksum is checked for the
records whose values are used (checking every record in pure Python would cost seconds per 10 MB,
and a flipped byte elsewhere cannot change a used value).
"""

from __future__ import annotations

import struct
from pathlib import Path

from grail_cluster.core.errors import DataError

_FIX = ("the event file is damaged: copy it again from the training node, or delete it to rank from the "
        "other sources (eval/<step>/train/metrics_eval.json, offline W&B with --wandb_dir)")


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _scalar(value) -> float | None:
    """A summary value as a float: ``simple_value`` (torch/tensorboardX writers) or a scalar tensor (TF2)."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor":
        from tensorboard.util import tensor_util

        arr = tensor_util.make_ndarray(value.tensor)
        return float(arr.reshape(-1)[0]) if arr.size == 1 else None
    return None


def read_scalars(path: str | Path, tags: set[str], notes: list[str] | None = None) -> list[tuple[int, str, float]]:
    """``(step, tag, value)`` of every scalar event with a tag in ``tags``, in file order."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the TensorBoard event file: {exc.strerror}", path=path, fix=_FIX) from None
    out: list[tuple[int, str, float]] = []
    pos, n = 0, len(data)
    while pos < n:
        if pos + 12 > n:
            _torn(notes, path, pos, n)
            break
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack_from("<I", data, pos + 8)
        if masked_crc32c(header) != crc:
            raise DataError(f"not a TensorBoard event file, or corrupt at byte {pos} (record header checksum "
                            "mismatch)", path=path, fix=_FIX)
        start, end = pos + 12, pos + 12 + length
        if end + 4 > n:
            _torn(notes, path, pos, n)
            break
        payload = data[start:end]
        ev = event_pb2.Event()
        try:
            ev.ParseFromString(payload)
        except DecodeError:
            raise DataError(f"corrupt TensorBoard record at byte {pos} (not an Event)", path=path, fix=_FIX) from None
        used = [(v.tag, _scalar(v)) for v in ev.summary.value if v.tag in tags] if ev.HasField("summary") else []
        if used:
            (dcrc,) = struct.unpack_from("<I", data, end)
            if masked_crc32c(payload) != dcrc:
                raise DataError(f"corrupt TensorBoard record at byte {pos} (data checksum mismatch)", path=path,
                                fix=_FIX)
            out += [(int(ev.step), tag, val) for tag, val in used if val is not None]
        pos = end + 4
    return out


def _torn(notes: list[str] | None, path: Path, pos: int, size: int) -> None:
    if notes is not None:
        notes.append(f"{path}: ends in a torn record at byte {pos} of {size} (a run still writing, or killed "
                     "mid-write); the events before it were read")
