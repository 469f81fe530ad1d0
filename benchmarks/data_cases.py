"""Cases 4 (memory) and 6 (data generation and load time).

Data generation runs the real generator (scripted policy, real robosuite env with EGL rendering, atomic HDF5
write). The "100-episode file" is made from the generated one by copying its demos (real pixels, so real
compression ratio and decode cost) until it holds 100 episodes; loading it is timed and its memory measured
in a fresh subprocess (``python -m benchmarks.data_cases --load FILE``), so that the peak RSS is the load's
own and not the suite's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from benchmarks.common import Row, Timing, skipped
from visual_dr3.data.hdf5_writer import ATTRS_CRC, string_attrs_crc
from visual_dr3.envs.tasks import get_task
from visual_dr3.fileio import atomic_path

CAMS = list(get_task("lift").image_keys)  # the datasets the suite generates are lift's
PROPRIO = list(get_task("lift").proprio_keys)


def generate(out: Path, s) -> tuple[dict, list[Row]]:
    """Generate ``s.gen_episodes`` lift episodes with ``s.gen_workers`` workers; rows of case 6."""
    from visual_dr3.data.generate import generate_dataset

    summary = generate_dataset(task="lift", episodes=s.gen_episodes, out=str(out), kind="mixed",
                               image_size=s.image_size, workers=s.gen_workers, seed=0, progress=True,
                               horizon=s.gen_horizon)
    per_s = summary["transitions"] / summary["seconds"]
    note = (f"lift mixed, {s.gen_episodes} episodes, {s.image_size}x{s.image_size} x2 cams, "
            f"{summary['workers']} worker(s), {summary['seconds']:.0f} s incl. start-up")
    return summary, [
        Row("datagen", "generated transitions/s (scripted policy + EGL rendering + gzip HDF5)", per_s,
            "transitions/s", note=note, reps=1),
        Row("datagen", "file size per transition", summary["file_size"] / summary["transitions"] / 1024,
            "KiB", note="gzip level 4, one-frame chunks", reps=1),
    ]


def tile_to(src: Path, dst: Path, episodes: int) -> int:
    """Write ``dst`` with ``episodes`` demos copied round-robin from ``src`` (same layout); returns transitions."""
    total = 0
    with atomic_path(dst) as tmp, h5py.File(src, "r") as fi, h5py.File(tmp, "w") as fo:
        names = sorted((k for k in fi["data"] if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
        data = fo.create_group("data")
        for k, v in fi["data"].attrs.items():
            data.attrs[k] = v
        for i in range(episodes):
            fi.copy(fi["data"][names[i % len(names)]], data, name=f"demo_{i}")
            total += int(data[f"demo_{i}"].attrs["num_samples"])
        data.attrs["total"] = total
        if ATTRS_CRC in data.attrs:  # the copied demos' text attributes are covered by the file's checksum
            data.attrs[ATTRS_CRC] = np.int64(string_attrs_crc(fo))
    return total


def drop_from_page_cache(path: Path) -> bool:
    """Ask the kernel to forget ``path``'s cached pages (written out first), so that the next read comes from
    the disk; True when it could be asked (Linux ``posix_fadvise``; no root needed for a file we own)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)


def measure_load(path: Path, device: str, cold: bool = True) -> dict:
    """Load ``path`` into a resident replay in a fresh process; seconds, bytes, peak RSS (and GPU memory).
    ``cold``: the file's pages are dropped from the page cache first (a first load after a reboot or on a
    fresh node; the file was just written, so a warm load would read memory, not the disk)."""
    dropped = drop_from_page_cache(path) if cold else False
    out = subprocess.run([sys.executable, "-m", "benchmarks.data_cases", "--load", str(path), "--device", device],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load subprocess failed: {out.stderr.strip().splitlines()[-1:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["cold"] = dropped
    return res


def _rss(field: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process in bytes, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark to the current RSS (``clear_refs`` 5, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _load_main(path: str, device: str) -> None:
    import torch

    import visual_dr3  # noqa: F401
    from visual_dr3.data.replay import load_replay

    torch.zeros(1, device=device)  # CUDA context before the baseline
    base = _rss("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    rb = load_replay(path, CAMS, PROPRIO, action_dim=7, device=device, progress=False)
    if rb.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = _rss("VmHWM")
    h, w = rb.image_size
    res = {"seconds": seconds, "nbytes": rb.nbytes, "transitions": rb.num_transitions, "frames": rb.num_frames,
           "raw_step_bytes": len(CAMS) * 3 * h * w, "rss_peak_delta": peak - base,
           "file_bytes": os.path.getsize(path)}
    if rb.device.type == "cuda":
        res["gpu_peak"] = torch.cuda.max_memory_allocated()
    print(json.dumps(res))


def memory_and_load(src: Path, s, device: str, budget_gib: float | None) -> list[Row]:
    """Case 4 (memory) and the load-time part of case 6, on a 100-episode file tiled from ``src``."""
    big = src.parent / "tiled100.hdf5"
    transitions = tile_to(src, big, 100)
    loads = [measure_load(big, device) for _ in range(s.load_reps)]
    m = loads[0]
    secs = Timing([x["seconds"] for x in loads])
    per_transition = m["nbytes"] / m["transitions"]
    ratio = per_transition / m["raw_step_bytes"]
    note = (f"100 episodes, {transitions:,} transitions, {m['frames']:,} frames, file "
            f"{m['file_bytes'] / 2**20:.0f} MiB")
    cache = ("page cache dropped before each load (posix_fadvise): read from disk" if all(x["cold"] for x in loads)
             else "page cache NOT dropped (no posix_fadvise): a warm-cache figure")
    rows = [
        Row("datagen", "load time of a 100-episode file (gzip -> resident uint8)", secs.median, "s", secs.spread,
            note=f"{note}; {cache}", reps=len(loads), samples=secs.samples),
        Row("memory", "resident bytes per transition / raw image bytes of one step", ratio, "x", None, "<= 1.1",
            ratio <= 1.1, note=f"{per_transition:,.0f} B vs {m['raw_step_bytes']:,} B", reps=1),
        Row("memory", "resident replay, 100 episodes", m["nbytes"] / 2**20, "MiB", note=note, reps=1),
        Row("memory", "peak RSS increase while loading it", m["rss_peak_delta"] / 2**20, "MiB",
            note="fresh process; includes h5py's decompression buffers", reps=1),
    ]
    if "gpu_peak" in m:
        rows.append(Row("memory", "peak GPU memory while loading it", m["gpu_peak"] / 2**20, "MiB", reps=1))
    if budget_gib is None:
        rows.append(skipped("memory", "largest dataset in a memory budget", "no budget known"))
    else:
        fits = budget_gib * 2**30 / per_transition
        mean_len = m["transitions"] / 100
        rows.append(Row("memory", f"largest dataset in {budget_gib:.0f} GiB ({device}), at this image size",
                        fits, "transitions", note=f"= {fits / mean_len:,.0f} episodes of {mean_len:.0f} steps; "
                        f"budget / resident bytes per transition", reps=1))
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Load a file into a resident replay; print one JSON line.")
    ap.add_argument("--load", required=True, help="HDF5 file to load")
    ap.add_argument("--device", default="cpu", help="replay device")
    a = ap.parse_args()
    _load_main(a.load, a.device)
