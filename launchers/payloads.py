"""What crosses into a job and back: pickle in, JSON out.

- In: Hydra hands a launcher an in-process task function (a closure, in Hydra's own launcher test
  suite), so it must be serialised. Like hydra_submitit_launcher we cloudpickle it with the Hydra
  context, the sweep config and ``Singleton.get_state()``: one payload file per submission, mode
  0600. The project never unpickles untrusted data, so a job loads only the payload whose SHA-256
  equals the digest the launcher wrote into that job's own script (``specs/<backend>/hydra.sh``); the file is read once and hashed before ``pickle.loads`` sees the bytes,
  and a missing or changed payload is refused (exit 3, a ``refused`` result). The trust root is the
  job script: whoever can edit it can run anything in the job anyway.
- Out: no pickle. The job writes ``results/r<round>/<num>.json`` (temporary file + rename):
  its status; the return value when it survives a JSON round trip unchanged, else its type name
  and ``repr`` (returned as :class:`ReturnRepr`); on failure the exception's type, text and
  traceback; and the job's config and Hydra config as YAML, from which the ``JobReturn`` is
  rebuilt. Hydra's launcher test suites return only JSON values (100, "foo"), so nothing more is
  needed; an object that must come back exactly belongs in a file the task writes to its output
  directory.

Jobs import this module: it stays on the standard library (cloudpickle only when writing).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grail_cluster.tools.data.io import write_json

RESULT_VERSION = 1
_DIGEST = re.compile(r"[0-9a-f]{64}")


# ----------------------------------------------------------------------------- in: the payload


class PayloadRefused(Exception):
    """The payload is missing or is not the one the launcher wrote for this job."""


def write_payload(state: Path, round_: int, payload: dict[str, Any]) -> str:
    """Pickle what one round's jobs need (``payloads/r<round>.pkl``); its SHA-256."""
    import cloudpickle

    from grail_cluster.launchers.errors import LauncherError

    try:
        data = cloudpickle.dumps(payload)
    except Exception as exc:
        raise LauncherError(f"the task function or Hydra's state cannot be serialised for the jobs: {exc}",
                            fix="define the task function at module level and keep open files, locks and "
                                "clients out of its closure") from None
    for sub_dir in ("payloads", f"results/r{round_}"):
        (state / sub_dir).mkdir(parents=True, exist_ok=True)
    path = state / "payloads" / f"r{round_}.pkl"
    tmp = path.with_suffix(".tmp")
    # Created 0600, not chmod-ed after: no moment at which another user could read the closure.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def load_payload(path: Path, digest: str) -> Any:
    """Unpickle the payload only if its bytes hash to ``digest`` (the launcher put the digest in
    this job's command line). The file is read once, so what is hashed is what is unpickled."""
    if not _DIGEST.fullmatch(digest):
        raise PayloadRefused(f"--sha256 {digest!r} is not a SHA-256 hex digest; the job command was not "
                             "written by the launcher")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PayloadRefused(f"payload {path} is missing (the sweep's .grail folder was removed or moved?); "
                             "run the sweep command again to write a new one") from None
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, digest):
        raise PayloadRefused(f"payload {path} has SHA-256 {actual}, but this job was submitted with "
                             f"{digest}: the file changed after the launcher wrote it, so it is not loaded; "
                             "run the sweep command again to write a new one")
    # Safe to unpickle: byte-identical to what the launcher of this sweep pickled (checked above).
    return pickle.loads(data)  # noqa: S301


# ----------------------------------------------------------------------------- out: the result


def result_file(result_dir: str | Path, index: int) -> Path:
    return Path(result_dir) / f"{index}.json"


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Readers see the whole file or none (temporary file + rename)."""
    write_json(path, {"version": RESULT_VERSION, **result})


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:  # not ours (results are renamed into place whole)
        return None
    return data if isinstance(data, dict) and "status" in data else None


def encode_value(value: Any) -> dict[str, Any]:
    """``{"json": v}`` when v comes back from JSON equal and of the same type (so tuples, NaN and
    non-string dict keys do not pass), else its type name and repr."""
    try:
        back = json.loads(json.dumps(value, allow_nan=False))
        if back == value and type(back) is type(value):
            return {"json": value}
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the job's result
        text = f"<repr failed: {exc!r}>"
    return {"repr": text[:20000], "type": type_name(type(value))}


@dataclass(frozen=True)
class ReturnRepr:
    """A job's return value that JSON cannot carry back unchanged: its type name and repr."""

    type_name: str
    text: str

    def __repr__(self) -> str:
        return f"ReturnRepr({self.type_name}: {self.text})"


def decode_value(encoded: dict[str, Any]) -> Any:
    if "json" in encoded:
        return encoded["json"]
    return ReturnRepr(str(encoded.get("type")), str(encoded.get("repr")))


def type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def encode_error(exc: BaseException) -> dict[str, str]:
    return {"type": type_name(type(exc)), "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))}
