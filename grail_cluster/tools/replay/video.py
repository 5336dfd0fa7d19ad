"""The frame loop: one motion into an H.264 video written under a partial name, and the contact sheet."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from grail_cluster.tools.replay.motion import (
    MACRO_BLOCK,
    RenderSettings,
    Task,
    load_motion,
)
from grail_cluster.tools.replay.scene import MotionRenderer

THUMB_WIDTH = 320
MAX_SHEET = 100  # motions on the contact sheet
CONTACT_SHEET = "contact_sheet.png"



# Test hook: the motion with this key hangs after its third frame (a stuck motion for the watchdog).
STALL_KEY_ENV = "GRAIL_RENDER_TEST_STALL_KEY"



def _thumbnail(frame: np.ndarray) -> np.ndarray:
    step = max(1, -(-frame.shape[1] // THUMB_WIDTH))
    return np.ascontiguousarray(frame[::step, ::step])


def remove_file(path: str | None) -> None:
    if path:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def render_task(task: Task, settings: RenderSettings, heartbeat=None) -> dict[str, Any]:
    """Render one motion to ``task.output`` (via ``task.partial``); returns its stats and a thumbnail."""
    import imageio.v2 as imageio

    t0 = time.perf_counter()
    motion = load_motion(task, settings)
    stall = os.environ.get(STALL_KEY_ENV) == task.key
    os.makedirs(os.path.dirname(task.output) or ".", exist_ok=True)
    thumb = None
    with MotionRenderer(motion, settings) as r:
        writer = imageio.get_writer(task.partial, format="FFMPEG", fps=motion.fps, codec="libx264", quality=5,
                                    pixelformat="yuv420p", macro_block_size=MACRO_BLOCK, ffmpeg_log_level="error")
        try:
            if heartbeat is not None:
                heartbeat(0, motion.frames)  # the scene is built: the watchdog's clock restarts here
            last = time.monotonic()
            mid = motion.frames // 2
            for i in range(motion.frames):
                frame = r.frame(i)
                writer.append_data(frame)
                if i == mid:
                    thumb = _thumbnail(frame)
                if stall and i == 2:
                    time.sleep(24 * 3600)
                if heartbeat is not None and time.monotonic() - last > 0.5:
                    heartbeat(i + 1, motion.frames)
                    last = time.monotonic()
            writer.close()
            os.replace(task.partial, task.output)
        except BaseException:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the original error matters, not ffmpeg's reaction to it
                pass
            remove_file(task.partial)
            raise
    seconds = time.perf_counter() - t0
    return {"key": task.key, "path": task.output, "frames": motion.frames, "fps": motion.fps,
            "seconds": round(seconds, 3), "notes": motion.notes, "thumb": thumb}



def mid_frame(path: Path) -> np.ndarray | None:
    """The middle frame of an existing video (for --skip_existing motions); None if unreadable."""
    try:
        import imageio.v2 as imageio

        reader = imageio.get_reader(str(path), format="FFMPEG")
        try:
            n = reader.count_frames()
            return _thumbnail(reader.get_data(max(0, n // 2)))
        finally:
            reader.close()
    except Exception:  # noqa: BLE001 - best effort: the sheet just leaves it out
        return None


def write_contact_sheet(path: Path, thumbs: list[tuple[str, np.ndarray]]) -> Path | None:
    """A grid of thumbnails labelled with their keys (PNG, written atomically)."""
    if not thumbs:
        return None
    from PIL import Image, ImageDraw

    thumbs = thumbs[:MAX_SHEET]
    th = max(t.shape[0] for _, t in thumbs)
    tw = max(t.shape[1] for _, t in thumbs)
    label = 14
    cols = max(1, math.ceil(math.sqrt(len(thumbs))))
    rows = math.ceil(len(thumbs) / cols)
    sheet = Image.new("RGB", (cols * tw, rows * (th + label)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    max_chars = max(4, tw // 6)
    for i, (key, img) in enumerate(thumbs):
        x, y = (i % cols) * tw, (i // cols) * (th + label)
        sheet.paste(Image.fromarray(np.asarray(img, np.uint8)), (x, y))
        text = key if len(key) <= max_chars else key[: max_chars - 1] + "~"
        draw.text((x + 2, y + th + 1), text, fill=(235, 235, 235))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path

