"""Content checks of one motion's files: every array the contracts name, its dtype, shape and values.

A library that SONIC would crash on hours into an 8-GPU job, or train on silently wrong data, must be
refused before anything is submitted. These checks run inside the parallel cold index (one pass over
the arrays each pickle already holds in memory, vectorised with numpy) and their findings are cached
with the index entry, so a warm index stays a stat pass.

A finding is plain data (JSON, for the cache) and carries no severity: the severity comes from
:data:`CHECKS` when the library is diagnosed, so ``--allow NAME`` can downgrade a check to a warning
without re-reading any file. ``docs/doctor-checks.md`` lists every check and the SONIC behaviour
behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

BODY_DOF = 29
HAND_DOF = 14
POSE_AA_JOINTS = 30
QUAT_NORM_TOL = 1e-2  # float32 retarget output is normalised to ~1e-7; 1e-2 is far from noise


@dataclass(frozen=True)
class Check:
    name: str
    allowable: bool  # may ``--allow NAME`` downgrade it to a warning?
    what: str
    why: str  # what SONIC (or the lifecycle) does with such data
    severity: str = "error"  # before --allow; a few facts of real GRAIL data are only worth a warning


CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("readable", False, "every pickle loads through the allow-listed unpickler",
          "SONIC's motion lib joblib-loads every file at start-up; one unreadable file stops the job"),
    Check("structure", False, "robot/objects pickles are single-key dicts keyed by the file's stem; meta is a flat dict",
          "the motion lib takes the key of each pickle as the motion key; a second key or another name "
          "trains the wrong motion or breaks the robot/object/USD pairing"),
    Check("required", False, "robot: dof, root_trans_offset, pose_aa, root_rot, fps; objects: root_pos, root_quat",
          "the motion lib indexes these keys unconditionally (KeyError at start-up)"),
    Check("dtype", False, "every named array is a real numeric array",
          "object, string, bool or complex arrays fail in torch.as_tensor or train on garbage"),
    Check("shape", False, "dof (T,29) or (T,43); root_trans_offset (T,3); pose_aa (T,30,3); root_rot (T,4); "
          "objects root_pos (T,N,3), root_quat (T,N,4); hand_dof_pos (T,14)",
          "forward kinematics over pose_aa and the observation tensors assume these shapes"),
    Check("finite", False, "no NaN or Inf in any array",
          "one NaN in a reference motion propagates through the reward and the PPO loss to every rank"),
    Check("frame-count", False, "every per-frame array of a motion, and its objects pickle, has the same length T",
          "paired motions are indexed frame by frame; a shorter array raises mid-episode, or pairs the wrong frames"),
    Check("fps", False, "fps is a finite number > 0",
          "the motion lib resamples to 50 Hz by dividing by fps"),
    Check("fps-mismatch", True, "robot and objects pickles of a motion have the same fps",
          "each is resampled by its own fps, so the object drifts in time against the hands"),
    Check("quat-norm", True, "robot root_rot and object root_quat are unit quaternions",
          "rotations built from non-unit quaternions scale and shear the body or object"),
    Check("hand-action-values", True, "hand_action_left/right come as a pair, are (T,) and either discrete -1/+1 or "
          "continuous >= 0 (GRAIL's upstream export)",
          "use_motion_hand_actions feeds them as the policy's hand command"),
    Check("contact-frames", True, "contact dicts map integer frame indices >= 0 to (N,3) finite arrays",
          "contact rewards look up the frame; a NaN point poisons the reward, a malformed dict fails at start-up"),
    Check("contact-frame-range", True, "contact frame indices lie inside the motion, [0, T)",
          "an index past the motion never fires a contact reward; GRAIL's export copies the source's contact dicts "
          "verbatim (contracts §5.4), so every exported library indexes them in the source's timeline: a warning",
          severity="warn"),
    Check("meta-types", True, "meta: object_name str, table_pos 3 numbers, table_quat 4 numbers of unit norm, "
          "table_size 3 positive numbers, scene_scale/smpl_height numbers",
          "the table is placed from table_pos/table_quat; a string or a 2-vector crashes scene building"),
    Check("usd", False, "each object USD is a USD file (crate or text) that usd-core opens",
          "Isaac Lab's spawner fails on the first env that references it, after the whole app has started"),
    # Library-level checks (doctor.diagnose): pairing and what each pipeline needs.
    Check("robot", False, "robot/ holds motions, one file per motion key",
          "an empty or ambiguous library trains nothing, or one of two files at random"),
    Check("frames", False, "every motion has at least one frame", "the motion lib samples a start frame in [0, T)"),
    Check("paired", True, "every robot key has objects/<key>.pkl (HOI), and no objects/meta file lacks a robot pickle",
          "use_paired_motions matches robot and object files by key and stops at the first unpaired one"),
    Check("meta", True, "table pipelines: every key has meta/<key>.pkl with the table pose",
          "without it the table is not placed and the object starts in the air"),
    Check("object_usd", False, "a USD per robot key (or one shared USD); terrain: flat_placeholder.usd",
          "HOI: SONIC drops unpaired motions then fails the Motion-USD pairing check; terrain: the scan raises"),
    Check("terrain", False, "terrain libraries have flat_placeholder.usd at the root or in object_usd/",
          "flat envs need the placeholder USD"),
    Check("hand_actions", True, "pipelines with use_motion_hand_actions: every robot pickle has hand_action_left/right",
          "the policy's hand command would be missing (process.py writes them into the _ha library)"),
    Check("contacts", True, "pipelines with contact rewards: objects pickles carry contact labels",
          "contact rewards never fire without them"),
    Check("bps", True, "HOI pipelines: _basis.npy and a bps/<key>.npy for every key",
          "SONIC substitutes zeros for a missing embedding without a word: the policy sees no object shape"),
    Check("quaternions", True, "one root_rot convention (wxyz or xyzw) per library",
          "export and render convert by the library's convention; a mixed library flips half the motions"),
    Check("bps-embedding", True, "each bps/<key>.npy is a 1-D finite float vector as long as the basis",
          "the observation concatenates the vector; a wrong length fails, NaN poisons every step"),
)}


def finding(check: str, path: str, key: str, problem: str, fix: str) -> dict[str, str]:
    assert check in CHECKS, check
    return {"check": check, "file": path, "key": key, "problem": problem, "fix": fix}


# ----------------------------------------------------------------------------- arrays


def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray)


def _numeric(v: Any) -> bool:
    return _is_array(v) and v.dtype.kind in "fiu"


def _check_array(out: list, path: str, name: str, v: Any, tail: tuple | None, frames: int | None,
                 *, alt_tails: tuple = ()) -> np.ndarray | None:
    """dtype, shape and finiteness of one array; returns it when it is usable for further checks."""
    if not _is_array(v):
        # Lists of numbers are what a hand-made file holds; SONIC converts them, so accept them.
        try:
            v = np.asarray(v)
        except Exception:  # noqa: BLE001 - anything that is not array-like is reported below
            v = None
        if v is None or v.dtype.kind not in "fiu":
            out.append(finding("dtype", path, name, f"`{name}` is a {type(v).__name__ if v is None else v.dtype}, "
                                                   "not a numeric array", "write it as a float32 numpy array"))
            return None
    if not _numeric(v):
        out.append(finding("dtype", path, name, f"`{name}` has dtype {v.dtype}, not a real number type",
                           "write it as a float32 numpy array"))
        return None
    if tail is not None:
        tails = (tail, *alt_tails)
        if v.ndim != 1 + len(tail) or not any(_tail_ok(v.shape[1:], t) for t in tails):
            want = " or ".join("(T," + ",".join("N" if d is None else str(d) for d in t) + ")" if t else "(T,)"
                               for t in tails)
            out.append(finding("shape", path, name, f"`{name}` has shape {tuple(v.shape)}, expected {want}",
                               "re-run retargeting/export; the contracts fix this shape"))
            return None
    if frames is not None and v.shape[0] != frames:
        out.append(finding("frame-count", path, name,
                           f"`{name}` has {v.shape[0]} frames but the motion has {frames}",
                           "every per-frame array must have the motion's length; re-run retargeting/process"))
        return None
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        bad = ~np.isfinite(v)
        first = int(np.argwhere(bad)[0][0]) if v.ndim else 0
        out.append(finding("finite", path, name,
                           f"`{name}` holds {int(bad.sum())} NaN/Inf values (first at frame {first})",
                           "drop this motion or re-run retargeting; SONIC would train on NaN"))
        return None
    return v


def _tail_ok(shape: tuple, tail: tuple) -> bool:
    return len(shape) == len(tail) and all(t is None or s == t for s, t in zip(shape, tail, strict=True))


def _check_quat_norm(out: list, path: str, name: str, q: np.ndarray) -> None:
    err = np.abs(np.linalg.norm(q.astype(np.float64), axis=-1) - 1.0)
    if err.size and float(err.max()) > QUAT_NORM_TOL:
        out.append(finding("quat-norm", path, name,
                           f"`{name}` is not unit norm (|norm-1| up to {float(err.max()):.3g} at frame "
                           f"{int(np.unravel_index(err.argmax(), err.shape)[0])})",
                           "normalise the quaternions (q / |q|) when writing the file"))


def _positive_number(v: Any) -> bool:
    if isinstance(v, bool | str | bytes):
        return False  # "30" would pass float() here and fail in SONIC's arithmetic
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f) and f > 0


def _fps(out: list, path: str, inner: dict) -> float | None:
    if "fps" not in inner:
        return None
    v = inner["fps"]
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.item()
    if not _positive_number(v):
        out.append(finding("fps", path, "fps", f"`fps` is {v!r}, not a number > 0",
                           "set fps to the capture rate (30 for retargeted motions, ~25 for exports)"))
        return None
    return float(v)


# ----------------------------------------------------------------------------- per file


def unwrap(obj: Any, stem: str, path: str, out: list, what: str) -> dict | None:
    """The inner dict of a robot/objects pickle, which must be ``{stem: {...}}`` (contracts §1.1)."""
    if not isinstance(obj, dict):
        out.append(finding("structure", path, "", f"the {what} pickle holds a {type(obj).__name__}, not a dict",
                           f"write {{'{stem}': {{...}}}} with joblib.dump"))
        return None
    keys = list(obj)
    if len(keys) != 1:
        shown = ", ".join(repr(k) for k in keys[:4]) + (" …" if len(keys) > 4 else "")
        out.append(finding("structure", path, "",
                           f"the {what} pickle has {len(keys)} top-level keys ({shown}); it must have exactly one, "
                           f"the motion key {stem!r}",
                           "one motion per file: {'<stem>': {...}} (a flat dict of arrays is not accepted)"))
        return None
    if keys[0] != stem:
        out.append(finding("structure", path, "", f"the {what} pickle's key is {keys[0]!r}, not the file's stem {stem!r}",
                           "rename the file to <key>.pkl or rewrite the key; SONIC pairs files by this key"))
        return None
    inner = obj[stem]
    if not isinstance(inner, dict):
        out.append(finding("structure", path, stem, f"the value under {stem!r} is a {type(inner).__name__}, not a dict",
                           "the value must be the dict of arrays (dof, root_rot, ...)"))
        return None
    return inner


def check_robot(inner: dict, path: str, out: list) -> tuple[int | None, float | None, str | None]:
    """Frames, fps and hand-action kind (discrete | continuous | None) of a robot inner dict."""
    missing = [k for k in ("dof", "root_trans_offset", "pose_aa", "root_rot", "fps") if k not in inner]
    if missing:
        out.append(finding("required", path, ",".join(missing), f"missing {', '.join('`' + k + '`' for k in missing)}",
                           "robot pickles need dof, root_trans_offset, pose_aa, root_rot and fps (contracts §1.2)"))
    frames = None
    dof = _check_array(out, path, "dof", inner["dof"], (BODY_DOF,), None, alt_tails=((BODY_DOF + HAND_DOF,),)) \
        if "dof" in inner else None
    if dof is not None:
        frames = int(dof.shape[0])
    elif "root_trans_offset" in inner and _is_array(inner["root_trans_offset"]) and inner["root_trans_offset"].ndim:
        frames = int(inner["root_trans_offset"].shape[0])
    for name, tail in (("root_trans_offset", (3,)), ("pose_aa", (POSE_AA_JOINTS, 3)), ("root_rot", (4,))):
        if name in inner:
            arr = _check_array(out, path, name, inner[name], tail, frames)
            if name == "root_rot" and arr is not None:
                _check_quat_norm(out, path, name, arr)
    for name, tail in (("smpl_joints", (24, 3)), ("hand_dof_pos", (HAND_DOF,))):
        if name in inner:
            _check_array(out, path, name, inner[name], tail, frames)
    fps = _fps(out, path, inner)
    return frames, fps, _hand_actions(inner, path, frames, out)


# The closed finger primitive's mean |joint| (contracts §1.8: L [-1.4286,-2.1429,-1.4286,-2.1429,0,1,1],
# R mirrored): what GRAIL's upstream continuous signal reads for a fully closed hand.
CLOSED_MEAN_ABS = (1.4286 + 2.1429 + 1.4286 + 2.1429 + 0.0 + 1.0 + 1.0) / 7


def hand_action_kind(*arrays: Any) -> str:
    """``discrete`` when every finite value is -1 or +1 (the public fork's open/closed signal, and this
    project's), ``continuous`` otherwise (GRAIL's upstream release writes the mean absolute hand joint
    position), ``none`` without values. Neither is turned into the other; readers record which one
    they saw."""
    vals = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return "none"
    return "discrete" if bool(np.all(np.abs(np.abs(vals) - 1.0) <= 1e-6)) else "continuous"


def hand_closed(values: Any, kind: str) -> np.ndarray:
    """Per frame, is the hand closed? Discrete: +1. Continuous: more than half way to the closed
    primitive's mean |joint| (reading a continuous value with the discrete rule, > 0, would call
    every frame of a slightly bent hand closed)."""
    v = np.asarray(values, np.float64)
    return v > 0 if kind == "discrete" else v > 0.5 * CLOSED_MEAN_ABS


def _hand_actions(inner: dict, path: str, frames: int | None, out: list) -> str | None:
    present = [k for k in ("hand_action_left", "hand_action_right") if k in inner]
    if not present:
        return None
    if len(present) == 1:
        other = "hand_action_right" if present[0] == "hand_action_left" else "hand_action_left"
        out.append(finding("hand-action-values", path, other, f"`{present[0]}` is present but `{other}` is not",
                           "write both hands' actions (process.py writes the pair)"))
        return None
    kinds = []
    for name in present:
        arr = _check_array(out, path, name, inner[name], (), frames)
        if arr is None:
            return None
        kind = hand_action_kind(arr)
        if kind == "continuous" and arr.size and float(arr.min()) < 0:
            out.append(finding("hand-action-values", path, name,
                               f"`{name}` is neither the discrete -1/+1 signal nor a continuous value >= 0 "
                               f"(min {float(arr.min()):.3g})",
                               "write -1 (open) / +1 (closed) per frame, as grail.retargeting.process does"))
            return None
        kinds.append(kind)
    return kinds[0] if kinds[0] == kinds[1] else "continuous"


def check_objects(inner: dict, path: str, frames: int | None, robot_fps: float | None, out: list) -> bool:
    """Shapes, norms, frame count and contacts of an objects inner dict; True if it has contact labels."""
    missing = [k for k in ("root_pos", "root_quat") if k not in inner]
    if missing:
        out.append(finding("required", path, ",".join(missing), f"missing {', '.join('`' + k + '`' for k in missing)}",
                           "object pickles need root_pos (T,1,3) and root_quat (T,1,4) (contracts §1.3)"))
    n_obj = None
    for name, last in (("root_pos", 3), ("root_quat", 4)):
        if name not in inner:
            continue
        arr = _check_array(out, path, name, inner[name], (None, last), frames)
        if arr is None:
            continue
        if n_obj is not None and arr.shape[1] != n_obj:
            out.append(finding("shape", path, name, f"`{name}` has {arr.shape[1]} objects but root_pos has {n_obj}",
                               "root_pos and root_quat must have the same object axis"))
        n_obj = arr.shape[1]
        if name == "root_quat":
            _check_quat_norm(out, path, name, arr)
    fps = _fps(out, path, inner)
    if fps is not None and robot_fps is not None and abs(fps - robot_fps) > 1e-6:
        out.append(finding("fps-mismatch", path, "fps", f"objects fps {fps:g} differs from the robot's {robot_fps:g}",
                           "write both pickles of a motion at the same frame rate"))
    if "scale" in inner:
        s = inner["scale"]
        arr = np.asarray(s) if not isinstance(s, dict | str) else None
        if arr is None or arr.dtype.kind not in "fiu" or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
            out.append(finding("shape", path, "scale", f"`scale` is {s!r:.60}, not a positive finite number or vector",
                               "write the object's scale as a float (or 3 floats) > 0, or drop the key"))
    contacts = False
    for name in ("contact_points_left_hand", "contact_points_right_hand"):
        if name in inner:
            contacts |= _check_contacts(inner[name], name, path, frames, out)
    return contacts


def _check_contacts(d: Any, name: str, path: str, frames: int | None, out: list) -> bool:
    if not isinstance(d, dict):
        out.append(finding("contact-frames", path, name, f"`{name}` is a {type(d).__name__}, not a dict frame -> (N,3) points",
                           "write {frame_index: float32 array (N,3)} (process.py --include_contact_points)"))
        return False
    bad_keys = [k for k in d if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0]
    if bad_keys:
        out.append(finding("contact-frames", path, name,
                           f"`{name}` has {len(bad_keys)} frame indices that are not integers >= 0 (first: {bad_keys[0]!r})",
                           "contact frames index the motion's own frames; re-run process on the retargeted motion"))
    elif frames is not None and (late := [k for k in d if k >= frames]):
        out.append(finding("contact-frame-range", path, name,
                           f"`{name}` has {len(late)} frame indices at or past the motion's {frames} frames "
                           f"(first: {min(late)})",
                           "expected in a library exported by GRAIL (contacts copied in the source's timeline); "
                           "otherwise re-run process on the retargeted motion"))
    for k, pts in d.items():
        arr = np.asarray(pts) if isinstance(pts, np.ndarray | list | tuple) else None
        if arr is None or arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[1] != 3:
            shape = None if arr is None else tuple(arr.shape)
            out.append(finding("contact-frames", path, name, f"`{name}[{k!r}]` is {type(pts).__name__} {shape}, not (N,3) floats",
                               "each contact frame maps to an (N,3) float32 array of points"))
            break
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            out.append(finding("contact-frames", path, name, f"`{name}[{k!r}]` holds NaN/Inf points",
                               "drop or recompute the contact points of this frame"))
            break
    return len(d) > 0


def _numbers(v: Any, n: int) -> np.ndarray | None:
    if isinstance(v, str | bytes | dict) or v is None:
        return None
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def check_meta(meta: Any, stem: str, path: str, out: list) -> str | None:
    """Types of the meta fields the lifecycle reads; returns object_name when it is a string."""
    if not isinstance(meta, dict):
        out.append(finding("structure", path, "", f"the meta pickle holds a {type(meta).__name__}, not a flat dict",
                           "write a flat dict (object_name, table_pos, table_quat, ...)"))
        return None
    if len(meta) == 1 and isinstance(meta.get(stem), dict):
        out.append(finding("structure", path, "", f"the meta pickle is wrapped in {{{stem!r}: ...}}; meta pickles are flat",
                           "write the fields at the top level (contracts §1.4)"))
        return None
    name = meta.get("object_name")
    if name is not None and not isinstance(name, str):
        out.append(finding("meta-types", path, "object_name", f"`object_name` is a {type(name).__name__}, not a string",
                           "write the object's name as a str"))
        name = None
    for key, n in (("table_pos", 3), ("table_quat", 4), ("table_size", 3)):
        if key in meta and meta[key] is not None:
            arr = _numbers(meta[key], n)
            if arr is None:
                out.append(finding("meta-types", path, key, f"`{key}` is {meta[key]!r:.60}, not {n} finite numbers",
                                   f"write {key} as a list or array of {n} floats"))
            elif key == "table_quat" and abs(float(np.linalg.norm(arr)) - 1.0) > QUAT_NORM_TOL:
                out.append(finding("meta-types", path, key, f"`table_quat` {arr.tolist()} is not unit norm",
                                   "write a unit quaternion (wxyz in retargeted/_ha meta)"))
            elif key == "table_size" and not np.all(arr > 0):
                out.append(finding("meta-types", path, key, f"`table_size` {arr.tolist()} has a size <= 0",
                                   "write the table's extent in metres, e.g. [1.5, 0.7, 0.04]"))
    for key in ("scene_scale", "smpl_height"):
        if key in meta and meta[key] is not None and not _positive_number(meta[key]):
            out.append(finding("meta-types", path, key, f"`{key}` is {meta[key]!r:.60}, not a number > 0",
                               f"write {key} as a float"))
    return name


# ----------------------------------------------------------------------------- USD and BPS

_USD_MAGIC = (b"PXR-USDC", b"#usda ")


def check_usd(path: str, out: list) -> None:
    """Cheap first (the magic bytes of a crate or text layer), then usd-core's own parser if installed."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        out.append(finding("usd", path, "", f"cannot read the USD: {exc.strerror}", "restore the file"))
        return
    if not head.startswith(_USD_MAGIC):
        out.append(finding("usd", path, "", f"not a USD file (starts with {head[:8]!r}, expected 'PXR-USDC' or '#usda')",
                           "re-export the object USD (IsaacLab MeshConverter, or usd-core)"))
        return
    try:
        from pxr import Sdf, Tf
    except ImportError:
        return  # usd-core is optional (the data extra); the magic check above still ran
    try:
        layer = Sdf.Layer.OpenAsAnonymous(path)
    except Tf.ErrorException as exc:
        layer, why = None, str(exc).strip().splitlines()[-1][:200]
    else:
        why = "usd-core returned no layer"
    if layer is None:
        out.append(finding("usd", path, "", f"usd-core cannot open it: {why}",
                           "re-export the object USD; open it with `usdcat` to see the error"))
    elif not layer.rootPrims:
        out.append(finding("usd", path, "", "the USD layer has no prims (an empty stage)",
                           "re-export the object USD with its mesh"))


def check_bps(path: str, dim: int | None, out: list) -> None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        out.append(finding("bps-embedding", path, "", f"not a readable .npy array: {str(exc)[:160]}",
                           "re-run compute_bps for this key"))
        return
    if arr.dtype.kind != "f" or arr.ndim != 1 or (dim is not None and arr.shape[0] != dim):
        out.append(finding("bps-embedding", path, "", f"embedding is {arr.dtype} {tuple(arr.shape)}, expected "
                                                     f"float ({dim if dim is not None else 'D'},) like the basis",
                           "re-run compute_bps with the same --num_basis as _basis.npy"))
    elif not np.isfinite(arr).all():
        out.append(finding("bps-embedding", path, "", "embedding holds NaN/Inf", "re-run compute_bps for this key"))


def bps_basis_problem(path: str) -> tuple[int | None, str | None]:
    """Rows of ``_basis.npy`` (its embedding length), or why it is unusable."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return None, f"not a readable .npy array: {str(exc)[:160]}"
    if arr.dtype.kind != "f" or arr.ndim != 2 or arr.shape[1] != 3 or not np.isfinite(arr).all():
        return None, f"basis is {arr.dtype} {tuple(arr.shape)}, expected finite float (N,3) points"
    return int(arr.shape[0]), None
