import pickle

import joblib
import numpy as np
import pytest

from grail_cluster.cli.main import main
from grail_cluster.core import safe_pickle
from grail_cluster.core.errors import DataError, UnsafePickleError
from tests.libgen import make_library, write_malicious_pickle


def test_loads_grail_data_plain_and_joblib(tmp_path):
    data = {"k": {"dof": np.arange(6, dtype=np.float32).reshape(2, 3), "fps": 30, "name": "apple",
                  "contact_points_left_hand": {3: np.zeros((2, 3), np.float32)}, "lst": [1, 2.5, "x"]}}
    for compress in (0, 3, ("gzip", 3), ("lzma", 1)):
        path = tmp_path / f"a{hash(str(compress))}.pkl"
        joblib.dump(data, path, compress=compress)
        out = safe_pickle.load(path)
        np.testing.assert_array_equal(out["k"]["dof"], data["k"]["dof"])
        assert out["k"]["contact_points_left_hand"][3].shape == (2, 3)
        assert out["k"]["lst"] == [1, 2.5, "x"]
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"a": np.float32(2.0), "b": np.ones(3), "t": (1, 2)}, fh, protocol=4)
    out = safe_pickle.load(path)
    assert out["a"] == np.float32(2.0) and out["t"] == (1, 2)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    write_malicious_pickle(path, marker)
    with pytest.raises(UnsafePickleError) as exc:
        safe_pickle.load(path)
    assert "not an allowed type" in str(exc.value) and str(path) in str(exc.value)
    assert not marker.exists()


def test_malicious_pickle_inside_compressed_joblib_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil_z.pkl"
    joblib.dump({"k": {"dof": np.zeros((3, 29), np.float32), "hook": Evil()}}, path, compress=3)
    with pytest.raises(UnsafePickleError):
        safe_pickle.load(path)
    assert not (tmp_path / "pwned").exists()


def test_object_array_payload_cannot_smuggle_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    arr = np.empty(1, dtype=object)
    arr[0] = Evil()
    path = tmp_path / "objarr.pkl"
    joblib.dump({"k": {"x": arr}}, path, compress=3)
    with pytest.raises(UnsafePickleError):
        safe_pickle.load(path)
    assert not (tmp_path / "pwned").exists()


def test_corrupt_and_missing_files_are_data_errors(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(DataError) as exc:
        safe_pickle.load(bad)
    assert str(bad) in str(exc.value)
    with pytest.raises(DataError):
        safe_pickle.load(tmp_path / "missing.pkl")


def test_doctor_names_the_malicious_file_and_fails(tmp_path, capsys):
    info = make_library(tmp_path / "lib", 6)
    marker = tmp_path / "pwned"
    evil = info.root / "robot" / f"{info.keys[2]}.pkl"
    write_malicious_pickle(evil, marker)
    rc = main(["doctor", str(info.root), "--json"])
    out = capsys.readouterr().out
    assert rc == 1
    assert str(evil) in out and "not an allowed type" in out
    assert not marker.exists()
