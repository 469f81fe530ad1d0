"""experiments.stitch_values: per-mode Q against the return on a stitching file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from experiments import stitch_values as sv

ROOT = Path(__file__).resolve().parents[1]


def test_episode_positions_follow_the_frame_links_in_any_id_order():
    # episode A: frames 0 -> 1 -> 2 -> 3 (3 transitions); episode B: frames 4 -> 5 -> 6 (2); ids shuffled
    links = [(2, 3), (4, 5), (0, 1), (5, 6), (1, 2)]
    obs, nxt = zip(*links)
    assert sv.episode_positions(np.array(obs), np.array(nxt)).tolist() == [2, 0, 0, 1, 1]


@pytest.mark.slow
def test_stitch_values_reads_every_mode_of_a_trained_checkpoint(tmp_path):
    from visual_dr3.data.generate import generate_dataset

    data = tmp_path / "stitch.hdf5"
    generate_dataset("lift", 4, str(data), kind="stitch", image_size=32, workers=1, seed=0, progress=False)
    out = tmp_path / "run"
    env = dict(os.environ, WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "lift", "--dataset", str(data),
                        "--output-dir", str(out), "--max-steps", "3", "--eval-every", "0", "--batch-size", "8",
                        "--model.feature_dim", "32", "--model.hidden_dims", "[32,32]", "--cql.num_actions", "2",
                        "--wandb", "off", "--progress", "false", "--algo.backup", "td"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    js = tmp_path / "values.json"
    sv.main(["--checkpoint", str(out / "checkpoints" / "last.ckpt"), "--dataset", str(data), "--early", "3",
             "--json", str(js)])
    rows = json.loads(js.read_text())
    assert list(rows) == ["release", "decoy", "task"]
    with h5py.File(data, "r") as f:
        for mask, row in rows.items():
            demos = [n.decode() for n in f[f"mask/{mask}"][()]]
            steps = sum(len(f[f"data/{d}/actions"]) for d in demos)
            # every step is a transition but a demo's last when it has no next frame (no success, no terminal)
            assert steps - len(demos) <= row["n"] <= steps
            assert set(row["all"]) == set(row["early"]) == set(sv.COLUMNS)
            assert all(np.isfinite(v) for part in ("all", "early") for v in row[part].values())
    assert rows["release"]["all"]["mc"] == rows["decoy"]["all"]["mc"] == 0.0  # prior data never sees reward
    assert rows["task"]["all"]["mc"] > 0 and rows["task"]["early"]["mc"] > 0
    whole = sv.run(sv.build_parser().parse_args(["--checkpoint", str(out / "checkpoints" / "last.ckpt"),
                                                 "--dataset", str(data), "--masks", "all"]))
    assert whole["all"]["n"] == sum(r["n"] for r in rows.values())


def test_stitch_values_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sv.main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--dataset", str(tmp_path / "x.hdf5")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --checkpoint") and "\n" not in err
