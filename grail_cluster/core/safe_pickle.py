"""Load GRAIL pickles (plain pickle or joblib, any compression) without running foreign code.

Motion libraries arrive from other people's machines, so a pickle is untrusted input. Both loaders
here resolve globals only through an allow-list: numpy arrays, dtypes and scalars, joblib's array
wrapper, and the builtin containers. A pickle that names anything else (``os.system``,
``builtins.eval``, a class from some package) is rejected before that object is created.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import UnsafePickleError

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}
_BUILTIN_GLOBALS = {
    ("builtins", name)
    for name in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "complex", "int", "float", "str", "bytes", "bool")
} | {("collections", "OrderedDict"), ("_codecs", "encode")}
_JOBLIB_GLOBALS = {("joblib.numpy_pickle", "NumpyArrayWrapper")}

ALLOWED_GLOBALS = frozenset(_NUMPY_GLOBALS | _BUILTIN_GLOBALS | _JOBLIB_GLOBALS)
FIX = (
    "GRAIL pickles may hold only numpy arrays, dicts, lists, scalars and strings; regenerate the "
    "file with the GRAIL tools (or joblib.dump of plain data), and do not load it with plain pickle"
)


def _resolve(module: str, name: str, path: str) -> Any:
    if (module, name) in ALLOWED_GLOBALS:
        mod = __import__(module, fromlist=[name])
        return getattr(mod, name)
    # numpy >= 2 pickles concrete dtype classes such as numpy.dtypes.Float32DType.
    if module == "numpy.dtypes" and name.endswith("DType") and name.isidentifier():
        import numpy.dtypes

        return getattr(numpy.dtypes, name)
    raise UnsafePickleError(
        f"refused to load: the pickle asks for `{module}.{name}`, which is not an allowed type", path=path, fix=FIX
    )


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name, self._path)


def _joblib_unpickler_class():
    # joblib's NumpyUnpickler reads array payloads written after each wrapper; we keep that but
    # route every global through the allow-list, including the nested stream of object arrays
    # (joblib < 1.5 loaded those with an unrestricted Unpickler).
    from joblib import numpy_pickle

    class _SafeNumpyUnpickler(numpy_pickle.NumpyUnpickler):
        dispatch = numpy_pickle.NumpyUnpickler.dispatch.copy()

        def find_class(self, module: str, name: str) -> Any:
            return _resolve(module, name, self.filename)

        def load_build(self):
            pickle._Unpickler.load_build(self)
            wrapper = self.stack[-1]
            if isinstance(wrapper, numpy_pickle.NumpyArrayWrapper):
                self.stack.pop()
                if wrapper.dtype.hasobject:
                    inner = _PlainUnpickler(self.file_handle, self.filename)
                    self.stack.append(inner.load())
                else:
                    self.stack.append(wrapper.read(self, True))

        dispatch[pickle.BUILD[0]] = load_build

    return _SafeNumpyUnpickler


_SAFE_JOBLIB = None


def load(path: str | Path) -> Any:
    """Load a plain or joblib pickle through the allow-list. Raises UnsafePickleError/DataError."""
    global _SAFE_JOBLIB
    from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap

    from grail_cluster.core.errors import DataError

    path = str(path)
    if _SAFE_JOBLIB is None:
        _SAFE_JOBLIB = _joblib_unpickler_class()
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            if head[:1] == b"\x80":
                # An uncompressed pickle: the C unpickler is an order of magnitude faster. joblib's
                # uncompressed files also start with PROTO, so a NumpyArrayWrapper may show up; then
                # we rewind and use joblib's reader.
                try:
                    return _PlainFirstUnpickler(raw, path).load()
                except _NeedsJoblib:
                    raw.seek(0)
            with _validate_fileobject_and_memmap(raw, path, None) as (fobj, _):
                if isinstance(fobj, str):
                    raise DataError("pickle written by joblib < 0.10, which is not supported", path=path, fix=FIX)
                return _SAFE_JOBLIB(path, fobj, True).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError("file not found", path=path) from exc
    except IsADirectoryError as exc:
        raise DataError("is a directory, not a pickle", path=path, fix="remove or rename it") from exc
    except PermissionError as exc:
        raise DataError("permission denied", path=path, fix="make the file readable by this user") from exc
    except RecursionError as exc:
        raise DataError("cannot read pickle: nested too deeply", path=path, fix=_REGEN) from exc
    except Exception as exc:  # noqa: BLE001 - see below
        # A malformed stream can fail anywhere inside pickle or joblib: KeyError for an unknown
        # opcode, struct.error, zlib/lzma errors, MemoryError for a huge bogus length... Each is the
        # same fact for the user: this file is not a readable GRAIL pickle.
        raise DataError(f"cannot read pickle ({_describe(exc, path)})", path=path, fix=_REGEN) from exc


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


_REGEN = "re-export or regenerate this file (it must be a joblib/pickle file of GRAIL data)"


def _describe(exc: BaseException, path: str) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        head = b""
    if not head:
        return "the file is empty"
    if head.lstrip()[:1] in (b"{", b"["):
        return "it is JSON, not a pickle"
    if head[:1] != b"\x80" and _looks_like_text(head):
        return "it is a text file, not a pickle"
    if isinstance(exc, EOFError | pickle.UnpicklingError) and "truncated" in str(exc).lower() or isinstance(exc, EOFError):
        return "the stream ends early: truncated file"
    if isinstance(exc, KeyError):
        return f"unknown pickle opcode {exc}"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


class _NeedsJoblib(Exception):
    pass


class _PlainFirstUnpickler(_PlainUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _JOBLIB_GLOBALS:
            raise _NeedsJoblib
        return super().find_class(module, name)
