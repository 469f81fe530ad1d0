"""Out of room (issue 37): a full disk or a read-only folder during a write gives one line naming the path, a
non-zero exit, and the previous complete file as it was; training that cannot write its checkpoint stops.

Real file systems, not mocks: a small tmpfs mounted for the test fills up for real (the kernel answers ENOSPC),
and a tmpfs remounted read-only answers EROFS. The tests run as root, which ignores permission bits, so a
``chmod``-ed folder would prove nothing; a mount needs CAP_SYS_ADMIN: where mounting is not allowed the tests
skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_main

pytestmark = pytest.mark.slow  # real filesystems that fill or turn read-only, runs through the CLIs

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model.feature_dim", "16", "--model.hidden_dims", "[16,16]", "--cql.num_actions", "2",
         "--wandb", "off", "--progress", "false", "--batch-size", "8", "--log-every", "2"]


def _mount(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"vdr3-{uuid.uuid4().hex[:6]}", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({(r.stderr or r.stdout).strip()[:120]}); a full disk and "
                    f"a read-only folder need a real file system (root's writes ignore permission bits)")


@pytest.fixture
def mounts():
    """``mount(path, size)`` mounts a tmpfs of ``size`` at ``path`` (unmounted after the test)."""
    done = []

    def mount(where: Path, size: str = "1m") -> Path:
        _mount(where, size)
        done.append(where)
        return where

    yield mount
    for where in reversed(done):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(where)], check=True, capture_output=True)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte (unbuffered writes until the kernel says ENOSPC)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob(".*.tmp.*"))


def test_full_disk_while_saving_a_checkpoint_stops_training_and_keeps_the_last_one(lift_dataset, tmp_path, mounts):
    import torch

    fs = mounts(tmp_path / "fs", "64m")
    out = fs / "run"
    base = [sys.executable, str(ROOT / "train.py"), "--task", "lift", "--dataset", str(lift_dataset),
            "--output-dir", str(out), "--checkpoint-every", "2", *SMALL]
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    from visual_dr3.app.train import main as train_main

    code, err = run_main(train_main, base[2:] + ["--max-steps", "2"])  # in-process: the first checkpoint
    assert code == 0, err[-3000:]
    last = out / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    st = os.statvfs(fs)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    # room for the small files, not for a second checkpoint beside the first: an atomic save (temp file, then
    # rename) cannot fit and must fail whole; a save over last.ckpt in place (without AtomicCheckpointIO) would
    # fit, exit 0, and leave a torn file on any later failure: this test then fails on the exit status
    remount(fs, f"size={used + len(before) // 2}")
    r = subprocess.run(base + ["--max-steps", "8", "--resume", "auto"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_line(r.stderr)
    assert line == (f"error: {last}: cannot be written (No space left on device); the previous file, if any, is "
                    f"unchanged (free some space or choose a writable folder, then run again)")
    assert last.read_bytes() == before  # the step-2 checkpoint, whole
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    assert leftovers(fs) == []
    steps = [ln.split(",") for ln in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps and all(ln for ln in steps)  # whole rows only
    assert "training summary" not in r.stdout  # it stopped; it did not go on without a checkpoint


def test_read_only_output_folder_for_train(lift_dataset, tmp_path, mounts):
    from visual_dr3.app.train import main as train_main

    fs = mounts(tmp_path / "fs", "1m")
    (fs / "run").mkdir()
    remount(fs, "ro")
    code, err = run_main(train_main, ["--task", "lift", "--dataset", str(lift_dataset), "--output-dir",
                                      str(fs / "run"), "--max-steps", "2", *SMALL])
    assert code == 2
    assert one_line(err) == (f"error: --output-dir {fs / 'run'}: not writable (Read-only file system); "
                             f"expected a writable folder")


def test_dataset_generation_on_a_full_disk_and_a_read_only_folder(tmp_path, mounts):
    from visual_dr3.data.generate import main as generate

    fs = mounts(tmp_path / "fs", "48k")
    target = fs / "lift.hdf5"
    target.write_bytes(b"an older dataset")
    argv = ["--task", "lift", "--episodes", "1", "--image-size", "32", "--horizon", "8", "--workers", "1",
            "--out", str(target), "--no-progress"]
    code, err = run_main(generate, argv)
    assert code == 2
    assert one_line(err).startswith(f"error: {target}: cannot be written (No space left on device)")
    assert target.read_bytes() == b"an older dataset" and leftovers(fs) == []
    remount(fs, "ro")
    code, err = run_main(generate, argv)
    assert code == 2 and one_line(err) == f"error: --out: folder {fs} is not writable; expected a writable folder"
    assert target.read_bytes() == b"an older dataset"


def test_video_metrics_and_report_on_a_full_disk(tmp_path, mounts):
    from visual_dr3.errors import UserError
    from visual_dr3.evaluation.video import write_mp4
    from visual_dr3.fileio import WriteError, write_text_atomic
    from visual_dr3.learner.csvlog import RunCSVLogger

    fs = mounts(tmp_path / "fs", "256k")
    video = fs / "ep0000_success.mp4"
    frames = [np.full((64, 64, 3), i * 20, np.uint8) for i in range(10)]
    write_mp4(video, frames)
    old_video = video.read_bytes()
    logger = RunCSVLogger(str(fs))
    logger.log_metrics({"critic_loss": 1.0, "q_mean": 0.5}, step=1)
    logger.save()
    report = write_text_atomic(fs / "index.md", "old report\n")
    fill(fs)

    noise = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(30)]
    with pytest.raises(WriteError) as e:
        write_mp4(video, noise)
    assert str(e.value).startswith(f"{video}: cannot be written (No space left on device)")
    assert video.read_bytes() == old_video
    with pytest.raises(WriteError) as e:  # appended rows until the disk refuses one
        for i in range(2, 4000):
            logger.log_metrics({"critic_loss": float(i), "q_mean": 0.5}, step=i)
            logger.save()
    assert str(e.value).startswith(f"{fs / 'metrics.csv'}: cannot be written (No space left on device)")
    rows = (fs / "metrics.csv").read_text().splitlines()
    assert rows[0] == "critic_loss,q_mean,step"  # the rows written before, each whole, none torn
    assert rows[1:] and all(r == f"{float(i)},0.5,{i}" for i, r in enumerate(rows[1:], start=1)), rows[-3:]
    with pytest.raises(WriteError):  # a new column: the file is rewritten whole or not at all
        logger.log_metrics({"critic_loss": 0.0, "alpha": 1.0}, step=5000)
        logger.save()
    assert (fs / "metrics.csv").read_text().splitlines() == rows
    with pytest.raises(UserError, match=r"index.md: cannot be written \(No space left on device\)"):
        write_text_atomic(report, "new report\n" * 100000)
    assert report.read_text() == "old report\n"
    assert leftovers(fs) == []


def _run_folder(d: Path) -> Path:
    """A minimal run folder (config.yaml, metrics.csv) for the report."""
    import yaml

    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"task": "lift", "seed": 0, "max_steps": 4, "output_dir": str(d),
                                                   "dr3": {"coef": 0.01}}))
    (d / "metrics.csv").write_text("critic_loss,dr3_dot,q_mean,srank,step\n1.0,0.5,0.1,8,1\n0.9,0.4,0.2,8,3\n")
    return d


def test_report_into_a_full_disk_and_a_read_only_folder(tmp_path, mounts):
    from visual_dr3.report import main as report_main

    run = _run_folder(tmp_path / "runs" / "a")
    fs = mounts(tmp_path / "fs", "1m")
    (fs / "report").mkdir()
    (fs / "report" / "index.md").write_text("old report\n")
    fill(fs)
    code, err = run_main(report_main, [str(run), "--out", str(fs / "report")])
    assert code == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]  # after its "read <run>" progress line
    assert len(errors) == 1 and "Traceback" not in err, err
    line = errors[0]
    assert line.startswith(f"error: {fs / 'report'}") and "No space left on device" in line, line
    assert (fs / "report" / "index.md").read_text() == "old report\n" and leftovers(fs) == []
    remount(fs, "ro")
    code, err = run_main(report_main, [str(run), "--out", str(fs / "report")])
    assert code == 2
    assert err.splitlines()[-1] == (f"error: --out {fs / 'report'}: not writable (Read-only file system); expected a "
                             f"writable folder")
