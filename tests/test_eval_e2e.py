"""End to end: ``python eval.py`` in a subprocess on a checkpoint made by ``python train.py`` (real dataset,
real robosuite envs, 32x32 images, short horizon), by default equal to training's own evaluation, and its
bad-input cases. (The training-time ``EvalCallback`` under real 2-process CPU DDP: tests/test_ddp.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visual_dr3.evaluation.stats import episode_seed, wilson_interval
from visual_dr3.evaluation.video import HOLD_FRAMES

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = ["--model.feature_dim", "16", "--model.hidden_dims", "[16,16]", "--cql.num_actions", "2",
         "--wandb", "off", "--progress", "false"]


def _env():
    return dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")


def run_eval(args, cwd, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


#: training's evaluation in the checkpoint fixture: at step 2 (the last), 3 episodes of 8 steps, seed 3, on one
#: worker acting with its own copy of the policy (one observation at a time: the trajectories are exact)
TRAIN_EVAL = ["--seed", "3", "--eval-every", "2", "--eval-episodes", "3", "--eval-horizon", "8",
              "--eval-workers", "1", "--eval-policy-in", "workers", "--eval-videos", "0"]


@pytest.fixture(scope="module")
def checkpoint(lift_dataset, tmp_path_factory):
    """A real (2-step) checkpoint of train.py on the session's tiny lift dataset, evaluated at its last step."""
    out = tmp_path_factory.mktemp("eval_ckpt") / "run"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "lift", "--dataset", str(lift_dataset),
                        "--max-steps", "2", "--batch-size", "8", "--output-dir", str(out), *TRAIN_EVAL, *SMALL],
                       cwd=out.parent, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    path = out / "checkpoints" / "last.ckpt"
    assert path.is_file() and (out / "eval" / "step_0000002.json").is_file()
    return path


def test_eval_cli_by_default_reproduces_trainings_evaluation(checkpoint, tmp_path):
    """``eval.py --checkpoint`` with no other flag but the workers' layout acts as training's evaluation: the
    mean action, the run's seed, eval_episodes and eval_horizon; every episode's trajectory (the records'
    digests of every observation) equals the logged one (sampled actions give other digests: measured when this
    test was written; ``--sample`` is run by ``two_worker_run``). With the policy in the workers (its own CPU copy,
    one observation at a time) the trajectories do not depend on the worker count: training's evaluation ran on
    one worker, this one on two."""
    logged = json.loads((checkpoint.parents[1] / "eval" / "step_0000002.json").read_text())
    assert (logged["deterministic"], logged["seed"], logged["policy_in"]) == (True, 3, "workers")
    assert logged["workers_per_rank"] == 1
    out = tmp_path / "eval.json"
    r = run_eval(["--checkpoint", checkpoint, "--workers", 2, "--policy-in", "workers", "--json", out,
                  "--no-progress"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "run seed 3; episode i starts from episode_seed(seed, i) (as training's evaluation)" in r.stdout
    assert "acting in each worker" in r.stdout
    rep = json.loads(out.read_text())
    assert (rep["deterministic"], rep["action"], rep["as_training_eval"]) == (True, "mean", True)
    assert (rep["seed"], rep["episodes"], rep["horizon"], rep["global_step"], rep["workers"]) == (3, 3, 8, 2, 2)
    assert rep["policy_in"] == "workers" and rep["envs_per_worker"] == 1
    t = rep["timing"]  # the workers' own policy calls, one per env step
    assert t["calls"] == t["rows"] == sum(r_["length"] for r_ in rep["records"]) and t["policy_seconds"] > 0
    keys = ("episode", "seed", "success", "return", "length", "obs_digest")
    assert [[x[k] for k in keys] for x in rep["records"]] == [[x[k] for k in keys] for x in logged["records"]]
    assert rep["summary"]["successes"] == logged["summary"]["successes"]
    digests = {x["obs_digest"] for x in rep["records"]}
    assert len(digests) == 3 and None not in digests


def read_frames(path: Path):
    import imageio.v2 as imageio

    return [f for f in imageio.get_reader(str(path))]  # (list() would ask len(): inf for ffmpeg)


@pytest.fixture(scope="module")
def two_worker_run(checkpoint, tmp_path_factory):
    d = tmp_path_factory.mktemp("eval2")
    out_json, videos = d / "res" / "eval.json", d / "videos"
    r = run_eval(["--checkpoint", checkpoint, "--episodes", 4, "--workers", 2, "--video", videos, "--json", out_json,
                  "--horizon", 12, "--seed", 5, "--sample", "--policy-in", "parent"], cwd=d)
    return r, out_json, videos


def test_eval_cli_writes_json_and_playable_videos(two_worker_run):
    r, out_json, videos = two_worker_run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "success rate" in r.stdout and "Wilson" in r.stdout and "env steps/s" in r.stdout
    assert "eval: 100%" in r.stderr  # the progress bar over episodes ran to the end

    rep = json.loads(out_json.read_text())
    assert [p.name for p in out_json.parent.iterdir()] == ["eval.json"]  # no temporary file left behind
    assert rep["task"] == "lift" and rep["env_name"] == "Lift" and rep["global_step"] == 2
    assert rep["episodes"] == 4 and rep["workers"] == 2 and rep["seed"] == 5
    assert (rep["deterministic"], rep["action"], rep["as_training_eval"]) == (False, "sampled", False)  # --sample
    assert "stochastic (sampled, --sample)" in r.stdout
    assert rep["envs_per_worker"] == 2 and rep["policy_in"] == "parent"  # 2 workers x 2 envs for 4 episodes
    t = rep["timing"]  # where the time went: the workers' sim and render time, the parent's policy calls
    assert t["rows"] == sum(r_["length"] for r_ in rep["records"]) and 1 <= t["calls"] <= t["rows"]
    assert t["env_seconds"] > 0 and t["render_seconds"] > 0 and t["policy_seconds"] > 0
    assert rep["horizon"] == 12 and rep["image_size"] == 32
    assert rep["render"]["image_convention"] == "opencv" and rep["render"]["reflection"] is False
    recs = rep["records"]
    assert [r_["episode"] for r_ in recs] == [0, 1, 2, 3]
    assert [r_["seed"] for r_ in recs] == [episode_seed(5, i) for i in range(4)]
    for r_ in recs:
        assert r_["error"] is None and r_["attempts"] == 1
        assert 1 <= r_["length"] <= 12 and r_["return"] == float(r_["success"])
    s = rep["summary"]
    succ = sum(r_["success"] for r_ in recs)
    assert s["episodes"] == 4 and s["successes"] == succ and s["success_rate"] == succ / 4
    assert (s["success_ci95_low"], s["success_ci95_high"]) == pytest.approx(wilson_interval(succ, 4))
    assert s["env_steps"] == sum(r_["length"] for r_ in recs) and s["env_steps_per_s"] > 0

    mp4s = sorted(videos.iterdir())
    assert [p.name for p in mp4s] == [f"ep{i:04d}_{'success' if recs[i]['success'] else 'failure'}.mp4"
                                      for i in range(4)]
    for i, p in enumerate(mp4s):
        assert recs[i]["video"] == str(p)
        frames = read_frames(p)
        # one frame per observation (reset + each step), then the end frame held
        assert len(frames) == recs[i]["length"] + 1 + HOLD_FRAMES
        # 32 px cameras upscaled 8x to 256 px, side by side, bordered, padded to multiples of 16
        assert frames[0].shape == (288, 544, 3)


def test_eval_cli_same_initial_states_whatever_the_worker_count(checkpoint, two_worker_run, tmp_path):
    """1 worker vs the 2-worker run: each episode starts from the same state (the videos' first frames; same
    horizon and the same per-episode action noise of --sample, so that the two mp4s are encoded alike: x264's
    rate control looks ahead).

    Later frames may differ slightly: a batch of 2 through the conv net rounds differently from a batch of 1
    (float32 on CPU), and the simulation amplifies ~1e-7 differences in actions. So only the start is exact.
    """
    import numpy as np

    _, json2, _ = two_worker_run
    out = tmp_path / "one"
    r = run_eval(["--checkpoint", checkpoint, "--episodes", 2, "--workers", 1, "--video", out, "--json",
                  out / "r.json", "--horizon", 12, "--seed", 5, "--sample", "--no-progress",
                  "--policy-in", "parent"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval:" not in r.stderr  # --no-progress
    ra = json.loads((out / "r.json").read_text())["records"]
    rb = json.loads(json2.read_text())["records"][:2]
    assert [x["seed"] for x in ra] == [x["seed"] for x in rb] == [episode_seed(5, i) for i in range(2)]
    firsts = [[read_frames(Path(x["video"]))[0].astype(int) for x in recs] for recs in (ra, rb)]
    for u, v in zip(*firsts):
        assert u.shape == v.shape and np.abs(u - v).max() <= 4  # same frames -> same H.264 (small slack)
    assert np.abs(firsts[0][0] - firsts[0][1]).max() > 50  # (episodes 0 and 1 do start differently)


@pytest.fixture(scope="module")
def bad_files(checkpoint, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "junk.ckpt").write_text("this is not a checkpoint\n")
    torch.save({"state_dict": {}, "epoch": 0}, d / "foreign.ckpt")
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ck["visual_dr3"]["env_args"]["env_kwargs"]["camera_heights"] = 48
    ck["visual_dr3"]["env_args"]["env_kwargs"]["camera_widths"] = 48
    torch.save(ck, d / "size48.ckpt")
    return d


@pytest.mark.parametrize("args, needle", [
    (["--checkpoint", "{d}/missing.ckpt"], "missing.ckpt: file not found"),
    (["--checkpoint", "{d}/junk.ckpt"], "not a PyTorch checkpoint"),
    (["--checkpoint", "{d}/foreign.ckpt"], "no 'visual_dr3' metadata (incompatible checkpoint)"),
    (["--checkpoint", "{d}/size48.ckpt"], "trained on 32x32 images but env_args render 48x48"),
    (["--checkpoint", "{ck}", "--episodes", "0"], "--episodes: got 0; expected an integer >= 1"),
    (["--checkpoint", "{ck}", "--workers", "0"], "--workers: got 0; expected an integer >= 1"),
    (["--checkpoint", "{ck}", "--envs-per-worker", "0"], "--envs-per-worker: got 0; expected an integer >= 1"),
    (["--checkpoint", "{ck}", "--policy-in", "gpu"], "--policy-in"),
    (["--checkpoint", "{ck}", "--episodes", "many"], "--episodes: got 'many'"),
    (["--checkpoint", "{ck}", "--device", "tpu"], "--device"),
    (["--checkpoint", "{ck}", "--weights", "ema"], "holds no moving average (trained with algo.policy_ema 0)"),
    (["--checkpoint", "{ck}", "--weights", "best"], "--weights"),
    (["--episodes", "3"], "--checkpoint"),
])
def test_bad_input_is_one_line_exit_2(args, needle, bad_files, checkpoint, tmp_path, capsys):
    # in-process (main(argv)); the process boundary is tested by the next test
    from visual_dr3.app.eval import main

    args = [a.format(d=bad_files, ck=checkpoint) for a in args]
    with pytest.raises(SystemExit) as e:
        main(args + ["--horizon", "5", "--json", str(tmp_path / "r.json")])
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], captured.err[-2000:]
    assert not (tmp_path / "r.json").exists()


def test_bad_input_through_the_script_is_one_line_exit_2(bad_files, tmp_path):
    r = run_eval(["--checkpoint", str(bad_files / "foreign.ckpt")], cwd=tmp_path, timeout=300)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no 'visual_dr3' metadata (incompatible checkpoint)" in lines[0], r.stderr[-2000:]


def test_grasp_trace_classes_each_episode(checkpoint):
    """experiments/grasp_trace.py on a real checkpoint: one line and one class per episode, a summary, and the
    episode seeds of every evaluation (episode_seed(seed, i))."""
    import numpy as np

    from experiments import grasp_trace

    out = grasp_trace.main(["--checkpoint", str(checkpoint), "--episodes", "2", "--seed", "7", "--horizon", "6",
                            "--steps"])
    assert [e["seed"] for e in out["episodes"]] == [episode_seed(7, 0), episode_seed(7, 1)]
    assert sum(out["counts"].values()) == 2
    for e in out["episodes"]:
        assert e["length"] == 6 and e["rows"].shape == (6, 10) and e["class"] in (
            "never closed", "closed off target", "closed, not lifted", "lifted, no success")
    # the classes, exactly
    assert grasp_trace.classify(True, None, 0.0) == "success"
    assert grasp_trace.classify(False, None, 0.0) == "never closed"
    assert grasp_trace.classify(False, np.array([0.012, 0.012, 0.0]), 0.0) == "closed off target"
    assert grasp_trace.classify(False, np.array([0.01, 0.0, 0.0]), 0.004) == "closed, not lifted"
    assert grasp_trace.classify(False, np.array([0.01, 0.0, 0.0]), 0.02) == "lifted, no success"
