"""A checkpoint writer killed mid-write leaves the previous checkpoint intact (temp file + fsync + rename)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from visual_dr3.learner.resume import AtomicCheckpointIO

HERE = Path(__file__).resolve().parent


def test_killed_writer_leaves_previous_checkpoint_intact(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 7}, last)
    assert not [p for p in last.parent.iterdir() if p.name != "last.ckpt"]  # no temp file left behind
    before = last.read_bytes()

    p = subprocess.Popen([sys.executable, str(HERE / "atomic_writer.py"), str(last)], stdout=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert p.stdout.readline().strip() == "writing"  # inside torch.save now
        tmp = [q for q in last.parent.iterdir() if q.name != "last.ckpt"]
        assert len(tmp) == 1 and tmp[0].name.startswith(".last.ckpt.tmp"), tmp  # writing beside, not over
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL
    assert last.read_bytes() == before
    ckpt = io.load_checkpoint(last)
    assert ckpt["global_step"] == 7 and torch.equal(ckpt["state_dict"]["w"], torch.ones(3))


def test_atomic_save_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "a" / "last.ckpt"
    io = AtomicCheckpointIO()
    for step in (1, 2):
        io.save_checkpoint({"global_step": step}, path)
        assert io.load_checkpoint(path)["global_step"] == step
    assert [q.name for q in path.parent.iterdir()] == ["last.ckpt"]


def test_atomic_path_commits_on_success_and_leaves_the_old_file_on_error(tmp_path):
    from visual_dr3.fileio import atomic_path, write_json_atomic, write_text_atomic

    target = tmp_path / "sub" / "f.txt"
    write_text_atomic(target, "old")
    for exc in (ValueError("boom"), KeyboardInterrupt()):
        try:
            with atomic_path(target) as tmp:
                tmp.write_text("half")
                assert tmp.parent == target.parent and tmp.name.startswith(".f.txt.tmp.")
                raise exc
        except (ValueError, KeyboardInterrupt):
            pass
        assert target.read_text() == "old"
        assert [p.name for p in target.parent.iterdir()] == ["f.txt"]  # the temp file is gone
    with atomic_path(tmp_path / "v.mp4", keep_suffix=True) as tmp:
        assert tmp.suffix == ".mp4" and tmp.name.startswith(".v.tmp.")
        tmp.write_bytes(b"x")
    assert (tmp_path / "v.mp4").read_bytes() == b"x"
    write_json_atomic(target, {"a": float("nan"), "b": torch.tensor(2.5)})
    assert target.read_text() == '{\n "a": null,\n "b": 2.5\n}\n'
