"""Case 8: time to a grasping policy. The wall time of ``python train.py --task lift --preset cpu`` (what a user
without a GPU runs) from an empty ``data/`` (``VISUAL_DR3_DATA_ROOT`` pointed at a fresh folder) to the first
evaluation whose success rate reaches the target; the run is stopped there. Also: the time until the dataset is
written, and until the first evaluation whatever its result. Quick settings (tiny data, 2 steps) cannot reach
the target: their row says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.5  # success rate of a "grasping policy"
QUICK_ARGS = ("--data.episodes", "2", "--data.image_size", "32", "--max-steps", "2", "--batch-size", "8",
              "--eval-every", "2", "--eval-episodes", "1", "--eval-horizon", "5", "--eval-workers", "1",
              "--model.feature_dim", "32", "--model.hidden_dims", "[32, 32]", "--cql.num_actions", "2")


def time_to_grasp(s, task: str = "lift", limit_s: float = 3600) -> list[Row]:
    extra = QUICK_ARGS if s.quick else ()
    with tempfile.TemporaryDirectory(prefix="vdr3-ttg-") as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, str(REPO / "train.py"), "--task", task, "--preset", "cpu", "--output-dir", str(run),
               "--wandb", "off", "--progress", "false", *extra]
        env = dict(os.environ, VISUAL_DR3_DATA_ROOT=tmp, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
        t0 = time.perf_counter()
        with open(Path(tmp) / "train.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            t_data = t_first = t_hit = None
            first = hit = None
            seen: set = set()
            while proc.poll() is None and time.perf_counter() - t0 < limit_s and t_hit is None:
                time.sleep(1.0)
                now = time.perf_counter() - t0
                if t_data is None and list((Path(tmp) / "data").glob("*.hdf5")):
                    t_data = now
                for f in sorted((run / "eval").glob("step_*.json")) if (run / "eval").is_dir() else []:
                    if f.name in seen:
                        continue
                    seen.add(f.name)
                    doc = json.loads(f.read_text())
                    summ = doc["summary"]
                    rec = (doc["step"], summ["successes"], summ["episodes"])
                    if t_first is None:
                        t_first, first = now, rec
                    if summ["success_rate"] >= TARGET:
                        t_hit, hit = now, rec
                        break
            if proc.poll() is None:  # reached (or out of time): stop the run, it has answered
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
    shown = " ".join(cmd[1:]).replace(str(run), "RUN").replace(str(REPO) + "/", "")
    setting = f"`{shown}` from an empty data/"
    rows = [Row("grasp", "time until the generated dataset is written", t_data, "s", note=setting, reps=1),
            Row("grasp", "time to the first evaluation", t_first, "s",
                note=(f"step {first[0]}: {first[1]}/{first[2]}" if first else "no evaluation ran"), reps=1)]
    if hit is not None:
        rows.append(Row("grasp", f"time to a grasping policy (first evaluation >= {TARGET:.0%} success)", t_hit, "s",
                        note=f"step {hit[0]}: {hit[1]}/{hit[2]}; the run is stopped there", reps=1))
    else:
        rows.append(Row("grasp", f"time to a grasping policy (first evaluation >= {TARGET:.0%} success)", None,
                        "s", note=f"not reached ({'quick settings' if s.quick else f'within {limit_s:.0f} s'})"))
    return rows
