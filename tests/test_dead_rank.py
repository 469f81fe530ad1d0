"""A DDP rank that dies (issue 37): real 2-process CPU DDP through ``python train.py``, one rank SIGKILLed for real.
The run ends within seconds with one line (which rank, how it died, the step, the last checkpoint's step, the
command that resumes), no gloo traceback, and the last checkpoint whole."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from visual_dr3.errors import EXIT_RANK_DIED

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
SMALL = ["--model.feature_dim", "16", "--model.hidden_dims", "[16,16]", "--cql.num_actions", "2",
         "--wandb", "off", "--progress", "false", "--batch-size", "8", "--log-every", "2"]


def wait_for_checkpoint(p, last: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert p.poll() is None, p.communicate()[1][-3000:]
        if last.is_file():
            return
        time.sleep(0.1)
    pytest.fail("no checkpoint in time")


def test_a_killed_rank_ends_the_run_at_once_with_one_line(lift_dataset, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    args = [sys.executable, str(ROOT / "train.py"), "--task", "lift", "--dataset", str(lift_dataset), "--devices",
            "2", "--accelerator", "cpu", "--max-steps", "100000", "--checkpoint-every", "2",
            "--output-dir", str(out), *SMALL]
    p = subprocess.Popen(args, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(p, last)
        rank1 = psutil.Process(p.pid).children()  # Lightning launched rank 1 from rank 0 (this process's child)
        assert len(rank1) == 1, rank1
        os.kill(rank1[0].pid, signal.SIGKILL)
        t0 = time.time()
        _, stderr = p.communicate(timeout=60)
        took = time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == EXIT_RANK_DIED, stderr[-3000:]
    assert took < 10, took
    assert "Traceback" not in stderr and "gloo" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-3000:]
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]  # whole, and the one named
    head = f"error: rank 1 (pid {rank1[0].pid}) killed by SIGKILL at step "
    assert lines[0].startswith(head), lines[0]
    died_at = int(lines[0][len(head):].split(";")[0])
    assert 2 <= step <= died_at
    assert f"; last checkpoint {last} (step {step}); continue with: " in lines[0]
    resume = lines[0].split("; continue with: ", 1)[1]
    assert shlex.split(resume) == ["python", *args[1:], "--resume", "auto"]
    assert not list(out.rglob(".*.tmp.*"))


def test_when_two_threads_see_the_death_the_second_waits_for_the_line(monkeypatch, tmp_path, capsys):
    """Rank 0's watcher thread and its main thread (the gloo error) can both report: the one that loses the race
    must not leave the process (os._exit) before the winner's line is printed (it once exited 4 with no line)."""
    from visual_dr3.app import ranks

    monkeypatch.setattr(ranks, "_reported", threading.Lock())
    monkeypatch.setattr(ranks, "_printed", threading.Event())
    started = threading.Event()

    def slow_last_checkpoint(out):  # reading the checkpoint's step takes a while on a busy machine
        started.set()
        time.sleep(0.5)
        return "last checkpoint: step 4"

    monkeypatch.setattr(ranks, "last_checkpoint", slow_last_checkpoint)
    watcher = threading.Thread(target=ranks.report, args=("rank 1 (pid 7)", "was killed (SIGKILL)", 5, tmp_path))
    watcher.start()
    assert started.wait(10)
    ranks.report("another rank", "stopped answering", 5, tmp_path)  # returns once the watcher's line is out
    err = capsys.readouterr().err
    watcher.join()
    assert err.count("error: rank 1 (pid 7) was killed (SIGKILL) at step 5; last checkpoint: step 4") == 1, err
    assert "another rank" not in err
