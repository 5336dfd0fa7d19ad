"""Spawned render workers with a per-motion watchdog: a stuck or dead motion costs only itself."""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path

from grail_cluster.core.errors import ConfigError, GrailError
from grail_cluster.tools.replay.motion import (
    RenderSettings,
    Task,
)
from grail_cluster.tools.replay.video import remove_file, render_task

DEFAULT_MOTION_TIMEOUT = 180.0



GL_FIX = ("install the offscreen GL libraries (`make render-deps`, i.e. apt-get install libegl1 libegl-mesa0 "
          "libgl1-mesa-dri libosmesa6), or set MUJOCO_GL=egl or MUJOCO_GL=osmesa")



def _probe_gl() -> None:
    """Render one tiny frame: raises if this GL backend cannot render here."""
    import mujoco

    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><light pos="0 0 2"/><geom type="sphere" size="0.2"/></worldbody></mujoco>')
    renderer = mujoco.Renderer(model, 16, 16)
    try:
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        renderer.update_scene(data)
        renderer.render()
    finally:
        renderer.close()


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, GrailError):
        return exc.render()
    return f"{type(exc).__name__}: {exc}".strip()


def _worker_main(conn, backend: str, settings: RenderSettings, lp_threads: int) -> None:
    """Spawned: pick the GL backend before mujoco is imported, warm up, then render tasks until None."""
    try:
        os.setpgrp()  # the parent kills our whole group (ffmpeg too) on a watchdog timeout
    except OSError:
        pass
    os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ["PYOPENGL_PLATFORM"] = backend
    if lp_threads > 0:
        os.environ.setdefault("LP_NUM_THREADS", str(lp_threads))
    try:
        _probe_gl()
        from grail_cluster.sonic.reference import scene as S

        S.build_model(S.SceneSpec(), render=True)  # parses and compiles the G1 once per worker
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        conn.send(("init_failed", _error_text(exc)))
        return
    conn.send(("ready", backend))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return

        def beat(done: int, total: int, key: str = task.key) -> None:
            conn.send(("frame", key, done, total))

        try:
            conn.send(("done", task.key, render_task(task, settings, heartbeat=beat)))
        except Exception as exc:  # noqa: BLE001 - one motion's failure must not end the worker
            conn.send(("error", task.key, _error_text(exc)))


class _Worker:
    def __init__(self, ctx, backend: str, settings: RenderSettings, lp_threads: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, backend, settings, lp_threads),
                                name="grail-render-worker", daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.born = time.monotonic()
        self.task: Task | None = None
        self.started = 0.0

    def kill(self) -> None:
        """SIGKILL this worker's process group (it leads one: ffmpeg goes too), or the worker alone."""
        pid = self.proc.pid
        # Only while it is unreaped is its pid (and group id) surely ours; once it has exited, an
        # orphaned ffmpeg sees EOF on its stdin and ends by itself.
        if pid is not None and self.proc.exitcode is None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    self.proc.kill()
                except (OSError, AttributeError):
                    pass
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(10)
        self.kill()


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


WORKER_MEM_BYTES = int(1.6 * 2**30)  # peak RSS of a worker: G1 scene (~0.7 GB) + one motion's compile


def _memory_bytes() -> int | None:
    """Memory this process may use: the smaller of MemAvailable and the cgroup limit (Slurm, k8s)."""
    limits = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append(int(text))
    return min(limits) if limits else None


def default_workers(n_tasks: int) -> int:
    """One worker per CPU, no more than the memory holds (WORKER_MEM_BYTES each) or there are motions."""
    mem = _memory_bytes()
    by_mem = max(1, mem // WORKER_MEM_BYTES) if mem else _cpus()
    return max(1, min(_cpus(), by_mem, n_tasks))


def gl_backends() -> list[str]:
    """The user's MUJOCO_GL alone, or egl then osmesa."""
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    return [chosen] if chosen else ["egl", "osmesa"]


class _Progress:
    """A rich bar on a TTY, plain lines otherwise (job logs)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("render-replay {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=total)

    def frame(self, key: str, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{key} {done}/{total}")

    def finished(self, key: str, ok: bool, text: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            if not ok:
                self.bar.console.print(f"[red]failed[/] {key}: {text}", markup=True, highlight=False)
        elif self.enabled:
            sys.stderr.write(f"[render-replay] {self.done}/{self.total} {'ok' if ok else 'FAILED'} {key}: {text}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_tasks(tasks: list[Task], settings: RenderSettings, *, workers: int = 0, motion_timeout: float = DEFAULT_MOTION_TIMEOUT,
              progress: bool = True) -> tuple[dict[str, dict], dict[str, str], str | None, list[str]]:
    """Render ``tasks`` on a pool of spawned workers with a per-motion watchdog.

    Returns (results by key, failures by key -> why, GL backend used, GL backends that failed and why).
    """
    if not tasks:
        return {}, {}, None, []
    n = max(1, min(workers, len(tasks))) if workers > 0 else default_workers(len(tasks))
    lp_threads = max(1, _cpus() // n)
    ctx = mp.get_context("spawn")
    queue = deque(sorted(tasks, key=lambda t: -t.weight))
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}
    backends = gl_backends()
    backend = backends.pop(0)
    init_errors: list[str] = []
    early_deaths = 0
    init_timeout = max(120.0, motion_timeout)
    bar = _Progress(len(tasks), progress)
    pool: list[_Worker] = []
    # SIGTERM (scancel, a time limit, `kill`) unwinds like Ctrl-C, so the finally below kills the
    # workers and deletes their partial videos.
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_terminated)

    def fail(w: _Worker, why: str) -> None:
        task = w.task
        if task is not None:
            remove_file(task.partial)
            failed[task.key] = why
            bar.finished(task.key, False, why)
        w.task = None

    def handle(w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
        elif kind == "frame":
            w.started = time.monotonic()  # progress: the watchdog restarts its clock
            bar.frame(msg[1], msg[2], msg[3])
        elif kind == "done" and w.task is not None:
            res = msg[2]
            results[res["key"]] = res
            bar.finished(res["key"], True, f"{res['frames']} frames in {res['seconds']:.1f} s")
            w.task = None
        elif kind == "error":
            fail(w, msg[2])
        elif kind == "init_failed":
            raise _InitFailed(msg[1])

    def replace(w: _Worker) -> None:
        """A fresh worker in a dead or killed one's place, if there is still work for it."""
        if queue:
            pool[pool.index(w)] = _Worker(ctx, backend, settings, lp_threads)
        else:
            pool.remove(w)

    def drain(w: _Worker) -> None:
        try:
            while w.conn.poll():
                handle(w, w.conn.recv())
        except (EOFError, OSError):
            pass

    try:
        pool = [_Worker(ctx, backend, settings, lp_threads) for _ in range(n)]
        while queue or any(w.task is not None for w in pool):
            for w in pool:
                if w.ready and w.task is None and queue:
                    w.task = queue.popleft()
                    w.started = time.monotonic()
                    w.conn.send(w.task)
            now = time.monotonic()
            deadlines = [w.started + motion_timeout for w in pool if w.task is not None]
            deadlines += [w.born + init_timeout for w in pool if not w.ready]
            wait_s = min([1.0] + [max(0.0, d - now) for d in deadlines])
            objs = {}
            for w in pool:
                objs[w.conn] = w
                objs[w.proc.sentinel] = w
            try:
                ready = multiprocessing.connection.wait(list(objs), timeout=wait_s)
                for obj in ready:
                    w = objs[obj]
                    if obj is w.conn:
                        drain(w)
                    else:
                        drain(w)  # messages sent just before it exited
                        if w.proc.exitcode is not None and w in pool:
                            code = w.proc.exitcode
                            why = f"worker died (exit code {code}{' = signal ' + str(-code) if code < 0 else ''})"
                            if not w.ready:
                                early_deaths += 1
                                if early_deaths > 3:
                                    raise _InitFailed(why + " before it was ready, several times")
                            fail(w, why + f" while rendering {w.task.key}" if w.task else why)
                            w.kill()
                            replace(w)
            except _InitFailed as exc:
                init_errors.append(f"MUJOCO_GL={backend}: {exc}")
                if not backends:
                    raise ConfigError("offscreen rendering does not work here (" + "; ".join(init_errors) + ")",
                                      fix=GL_FIX) from None
                for w in pool:
                    if w.task is not None:
                        queue.appendleft(w.task)
                        remove_file(w.task.partial)
                        w.task = None
                    w.kill()
                backend = backends.pop(0)
                early_deaths = 0
                pool = [_Worker(ctx, backend, settings, lp_threads) for _ in range(n)]
                continue
            now = time.monotonic()
            for w in list(pool):
                if w.task is not None and now - w.started > motion_timeout:
                    drain(w)  # it may have just finished, or reported progress
                    if w.task is not None and time.monotonic() - w.started > motion_timeout:
                        w.kill()
                        fail(w, f"watchdog: no progress for {motion_timeout:g} s; worker killed, partial video removed")
                        replace(w)
                elif not w.ready and now - w.born > init_timeout:
                    w.kill()
                    raise ConfigError(f"a render worker did not start within {init_timeout:g} s (MUJOCO_GL={backend})",
                                      fix=GL_FIX)
    finally:
        for w in pool:
            if w.task is not None:
                w.kill()
                remove_file(w.task.partial)
            else:
                w.stop()
        bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return results, failed, backend, init_errors


class _InitFailed(Exception):
    pass


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while rendering."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")

