"""Episode videos: the cameras the policy saw, side by side, upscaled, with a success/failure border.

Frames are built with numpy only from the observations the policy received (no extra rendering): each
camera image is upscaled by an integer factor with nearest-neighbour repetition (crisp pixels; 84 px ->
252 px, 32 px -> 256 px), cameras are placed side by side on a dark frame, a thin bar under them shows
the time step over the horizon, and once the episode has ended the frame's border turns green (success) or
red (failure) and the last frame is held for half a second. Written as H.264 mp4 (yuv420p, every dimension a
multiple of 16, so any player opens it) with imageio + imageio-ffmpeg's bundled ffmpeg binary, to a
temporary name that is renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from visual_dr3.fileio import atomic_path

TARGET_HEIGHT = 256
BORDER = 8
GAP = 4
BAR = 6
BLOCK = 16  # H.264 macro block: width and height are padded to multiples of this
RUNNING_RGB = (48, 48, 48)
SUCCESS_RGB = (30, 190, 60)
FAILURE_RGB = (210, 40, 40)
BAR_RGB = (230, 230, 230)
HOLD_FRAMES = 10


def upscale_factor(image_height: int, target_height: int = TARGET_HEIGHT) -> int:
    """Integer nearest-neighbour factor that brings ``image_height`` closest to ``target_height`` (>= 1)."""
    return max(1, int(round(target_height / max(1, int(image_height)))))


def _pad_to(n: int, block: int = BLOCK) -> int:
    return -(-n // block) * block


def compose_frame(images: Sequence[np.ndarray], scale: int, border_rgb=RUNNING_RGB,
                  progress: float | None = None) -> np.ndarray:
    """One video frame: ``images`` (each uint8 (H, W, 3), same H) upscaled by ``scale``, side by side.

    A ``BORDER``-pixel frame of ``border_rgb`` surrounds them; with ``progress`` in [0, 1] a bar under the
    images is filled that far. Height and width are padded (with the border colour) to multiples of 16.
    """
    if not images:
        raise ValueError("compose_frame: no images")
    ups = [np.repeat(np.repeat(np.asarray(im, dtype=np.uint8), scale, axis=0), scale, axis=1) for im in images]
    h = max(u.shape[0] for u in ups)
    inner_w = sum(u.shape[1] for u in ups) + GAP * (len(ups) - 1)
    inner_h = h + (GAP + BAR if progress is not None else 0)
    H, W = _pad_to(inner_h + 2 * BORDER), _pad_to(inner_w + 2 * BORDER)
    frame = np.empty((H, W, 3), dtype=np.uint8)
    frame[:] = np.asarray(border_rgb, dtype=np.uint8)
    top = (H - inner_h) // 2
    x = (W - inner_w) // 2
    x0 = x
    for u in ups:
        frame[top:top + u.shape[0], x:x + u.shape[1]] = u
        x += u.shape[1] + GAP
    if progress is not None:
        y = top + h + GAP
        frame[y:y + BAR, x0:x0 + inner_w] = 0
        filled = int(round(float(np.clip(progress, 0.0, 1.0)) * inner_w))
        frame[y:y + BAR, x0:x0 + filled] = np.asarray(BAR_RGB, dtype=np.uint8)
    return frame


def episode_frames(steps: Sequence[Sequence[np.ndarray]], success: bool, horizon: int | None = None,
                   target_height: int = TARGET_HEIGHT, hold: int = HOLD_FRAMES) -> list[np.ndarray]:
    """Frames of one episode: ``steps[t]`` = the camera images of observation t (t = 0 .. length).

    The last observation is drawn with the green/red border and held for ``hold`` extra frames.
    """
    if not steps:
        return []
    scale = upscale_factor(np.asarray(steps[0][0]).shape[0], target_height)
    total = max(1, int(horizon) if horizon else len(steps) - 1)
    end_rgb = SUCCESS_RGB if success else FAILURE_RGB
    frames = []
    for t, images in enumerate(steps):
        last = t == len(steps) - 1
        frames.append(compose_frame(images, scale, end_rgb if last else RUNNING_RGB, progress=t / total))
    frames.extend([frames[-1]] * hold)
    return frames


def write_mp4(path: "str | os.PathLike", frames: Sequence[np.ndarray], fps: int = 20) -> Path:
    """Write ``frames`` (uint8 (H, W, 3), H and W multiples of 16) as an H.264 mp4, atomically."""
    import imageio.v2 as imageio  # lazy: only the process writing videos needs it

    with atomic_path(path, keep_suffix=True) as tmp:  # ffmpeg picks the container from the extension
        with imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=BLOCK, quality=8,
                                ffmpeg_log_level="error") as w:
            for f in frames:
                w.append_data(np.ascontiguousarray(f))
    return Path(path)


def write_episode_video(path: "str | os.PathLike", steps: Sequence[Sequence[np.ndarray]], success: bool,
                        horizon: int | None = None, fps: int = 20,
                        target_height: int = TARGET_HEIGHT) -> Path:
    """Compose and write one episode's video (see :func:`episode_frames`)."""
    return write_mp4(path, episode_frames(steps, success, horizon, target_height), fps=fps)


def video_name(episode: int, success: bool, prefix: str = "") -> str:
    """``ep0003_success.mp4`` / ``ep0003_failure.mp4``."""
    return f"{prefix}ep{int(episode):04d}_{'success' if success else 'failure'}.mp4"
