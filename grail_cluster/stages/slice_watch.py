"""Run SONIC's trainer or evaluator as a child, stream its output through, and stop it on a slice
that disagrees with the plan (``slice_audit`` judges the lines).

Output is passed on chunk by chunk as it arrives (nothing is held back, so logs and ``logs --follow``
stay live); only the current partial line is kept, capped, for the marker parser. The child gets its
own process group so a mismatch stops ``accelerate launch`` and every worker it started; signals
the job receives (scancel, SLURM's USR2 warning, preemption, Ctrl-C) are passed on to that group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from grail_cluster.stages.slice_audit import SliceAudit, write_audit

LINE_CAP = 64 * 1024  # a progress bar without newlines must not grow the parse buffer without bound
GRACE_S = 15.0  # after SIGTERM, before SIGKILL: time for SONIC's workers to exit
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
MISMATCH_EXIT = 1  # bad data: the plan's slices are not what SONIC took


def _pump(src, dst, audit: SliceAudit, lock: threading.Lock, on_mismatch) -> None:
    partial = b""
    fd = src.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        dst.write(chunk)
        dst.flush()
        partial += chunk
        *lines, partial = partial.split(b"\n")
        partial = partial[-LINE_CAP:]
        for raw in lines:
            with lock:
                sig = audit.feed(raw.decode(errors="replace"))
            if sig:
                on_mismatch(sig)
    if partial:
        with lock:
            sig = audit.feed(partial.decode(errors="replace"))
        if sig:
            on_mismatch(sig)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it if this watcher dies. The child has its own session, so a
    SIGKILL of the job's process group (an executor's time limit, cancel) would otherwise orphan SONIC;
    accelerate/torchrun pass a SIGTERM on to their workers."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def run_watched(argv: list[str], cwd: str, audit: SliceAudit, audit_file, *, poll_s: float = 0.5) -> int:
    """The child's exit status, or ``MISMATCH_EXIT`` once a marker disagrees (the child is stopped)."""
    lock = threading.Lock()
    mismatch: list[str] = []
    stop = threading.Event()

    def on_mismatch(sig: str) -> None:
        mismatch.append(sig)
        stop.set()

    child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                             preexec_fn=_die_with_parent)
    forward = lambda signum, _frame: _signal_group(child.pid, signum)  # noqa: E731
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    pumps = [threading.Thread(target=_pump, args=(child.stdout, sys.stdout.buffer, audit, lock, on_mismatch), daemon=True),
             threading.Thread(target=_pump, args=(child.stderr, sys.stderr.buffer, audit, lock, on_mismatch), daemon=True)]
    for t in pumps:
        t.start()
    written = None
    try:
        while child.poll() is None:
            if stop.wait(poll_s):
                break
            with lock:
                warning = audit.check_timeout()
                state = audit.record()
            if warning:
                print(warning, flush=True)
            if state["verdict"] != written:  # rewritten only when the verdict changes
                write_audit(audit_file, state)
                written = state["verdict"]
        if mismatch and audit.mode == "enforce":
            _stop(child)
            for t in pumps:
                t.join(timeout=5)
            with lock:
                write_audit(audit_file, audit.record(finished=True, exit_code=MISMATCH_EXIT))
            # Last on stderr, so the job's failure signature is this line.
            print(f"[grail] {mismatch[0]}\nerror: {mismatch[0]}\n  fix: {_fix()}", file=sys.stderr, flush=True)
            return MISMATCH_EXIT
        if mismatch:
            print(f"[grail] slice audit (warn mode, not stopping): {mismatch[0]}", flush=True)
        code = child.wait()
        for t in pumps:
            t.join(timeout=10)
        with lock:
            write_audit(audit_file, audit.record(finished=True, exit_code=code))
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            _stop(child)


def _fix() -> str:
    from grail_cluster.stages.slice_audit import FIX

    return FIX


def _stop(child: subprocess.Popen) -> None:
    _signal_group(child.pid, signal.SIGTERM)
    deadline = time.time() + GRACE_S
    while child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if child.poll() is None:
        _signal_group(child.pid, signal.SIGKILL)
        child.wait()
    else:
        _signal_group(child.pid, signal.SIGKILL)  # workers that outlived their launcher
