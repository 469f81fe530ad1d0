"""Evaluation: Wilson interval (exact values), episode seeds, aggregation, videos, checkpoint checks, and the
rollout pool on real robosuite envs (tiny 32x32 images, a few steps): seeds independent of the number of
workers, worker crashes retried once and reported, failures recorded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)
from visual_dr3.errors import UserError
from visual_dr3.evaluation.stats import (Z95, env_seed_for, episode_seed, format_summary, newcombe_interval, summarize,
                                         wilson_interval)
from visual_dr3.evaluation.video import (FAILURE_RGB, HOLD_FRAMES, SUCCESS_RGB, compose_frame, episode_frames,
                                         upscale_factor, write_episode_video)

IMAGE_KEYS = ["agentview_image", "robot0_eye_in_hand_image"]
PROPRIO_KEYS = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
SIZE = 32


# ---------------------------------------------------------------------------------------------------------
# Wilson interval
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("x1,n1,x2,n2,low,high", [
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score), examples (a)-(f)
    (56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090), (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926), (0, 10, 0, 20, -0.1611, 0.2775), (10, 10, 0, 20, 0.6791, 1.0000)])
def test_newcombe_interval_matches_the_published_examples(x1, n1, x2, n2, low, high):
    d, lo, hi = newcombe_interval(x1, n1, x2, n2)
    assert d == pytest.approx(x1 / n1 - x2 / n2)
    assert (round(lo, 4), round(hi, 4)) == (low, high)
    with pytest.raises(ValueError, match="n1=0"):
        newcombe_interval(0, 0, 1, 2)


def test_wilson_no_trials_is_the_whole_unit_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_5_of_10_hand_computed():
    # z = 1.959964, z^2 = 3.841459; centre = (0.5 + z^2/20) / (1 + z^2/10) = 0.5 exactly;
    # half = z * sqrt(0.5*0.5*10 + z^2/4) / (10 + z^2) = 1.959964 * sqrt(3.460365) / 13.841459 = 0.263407
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.236593, abs=1e-6)
    assert high == pytest.approx(0.763407, abs=1e-6)
    assert (low + high) / 2 == pytest.approx(0.5, abs=1e-12)


def test_wilson_10_of_10_hand_computed():
    # p = 1: low = n / (n + z^2) = 10 / 13.841459 = 0.722467; high = 1
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.722467, abs=1e-6)
    assert low == pytest.approx(10 / (10 + Z95 ** 2), rel=1e-12)
    assert high == 1.0


def test_wilson_0_of_10_hand_computed():
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.277533, abs=1e-6)  # z^2 / (n + z^2)


@pytest.mark.parametrize("s, n", [(1, 3), (7, 20), (37, 50), (1, 1000)])
def test_wilson_bounds_are_the_roots_of_the_score_equation(s, n):
    # The Wilson bounds are the p with (s/n - p)^2 = z^2 p (1 - p) / n, i.e. the roots of
    # (1 + z^2/n) p^2 - (2 s/n + z^2/n) p + (s/n)^2 = 0.
    z2, ph = Z95 ** 2, s / n
    roots = sorted(np.roots([1 + z2 / n, -(2 * ph + z2 / n), ph ** 2]).real)
    assert wilson_interval(s, n) == pytest.approx(tuple(roots), abs=1e-12)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


# ---------------------------------------------------------------------------------------------------------
# seeds and aggregation
# ---------------------------------------------------------------------------------------------------------

def test_episode_seed_depends_only_on_run_seed_and_episode():
    seeds = [episode_seed(0, i) for i in range(200)]
    # pinned: every report's evaluation episodes are these; a changed formula would silently change them
    assert seeds[:3] == [2968811710, 3964924996, 3141116543] and episode_seed(7, 123) == 682066301
    assert len(set(seeds)) == 200  # distinct episodes, distinct seeds
    assert all(0 <= s < 2 ** 32 for s in seeds)
    assert not set(seeds) & {episode_seed(1, i) for i in range(200)}  # another run seed, other seeds


@pytest.mark.parametrize("world", [1, 2, 3, 7, 250])
def test_rank_split_hands_out_every_episode_seed_exactly_once(world):
    # What the evaluation code itself hands out: the callback's split of the episodes over DDP ranks, then the
    # queue a rank's pool run starts its workers from (any worker takes the next queued episode).
    from visual_dr3.evaluation.lockstep import episode_queue
    from visual_dr3.evaluation.stats import rank_episodes

    n, run_seed = 200, 5
    handed = [(ep.index, ep.seed, ep.attempt) for rank in range(world)
              for ep in episode_queue(rank_episodes(n, rank, world), run_seed)]
    assert sorted(handed) == [(i, episode_seed(run_seed, i), 1) for i in range(n)]


def test_summarize_counts_errors_as_failures_and_never_drops_them():
    records = [
        {"episode": 0, "success": True, "return": 1.0, "length": 40, "attempts": 1, "error": None},
        {"episode": 1, "success": False, "return": 0.0, "length": 120, "attempts": 1, "error": None},
        {"episode": 2, "success": True, "return": 1.0, "length": 50, "attempts": 2, "error": None},
        {"episode": 3, "success": False, "return": 0.0, "length": 0, "attempts": 2, "error": "RuntimeError: x"},
    ]
    s = summarize(records, seconds=2.1, rollout_seconds=1.05)
    assert s["episodes"] == 4 and s["successes"] == 2 and s["success_rate"] == 0.5
    assert (s["success_ci95_low"], s["success_ci95_high"]) == wilson_interval(2, 4)
    assert s["mean_return"] == 0.5 and s["mean_length"] == 52.5
    assert s["env_steps"] == 210 and s["env_steps_per_s"] == pytest.approx(100.0)
    assert s["rollout_steps_per_s"] == pytest.approx(200.0)
    assert s["errors"] == 1 and s["retried"] == 2
    table = format_summary(s)
    assert "0.500" in table and "2/4" in table and "1 episode(s) failed" in table


def test_summarize_empty():
    s = summarize([])
    assert s["episodes"] == 0 and math.isnan(s["success_rate"]) and s["success_ci95_low"] == 0.0


# ---------------------------------------------------------------------------------------------------------
# videos
# ---------------------------------------------------------------------------------------------------------

def test_frames_are_upscaled_side_by_side_with_a_result_border():
    rng = np.random.default_rng(0)
    steps = [[rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2)] for _ in range(4)]
    assert upscale_factor(32) == 8 and upscale_factor(84) == 3 and upscale_factor(512) == 1
    frames = episode_frames(steps, success=True, horizon=10)
    assert len(frames) == 4 + HOLD_FRAMES
    h, w, _ = frames[0].shape
    assert h % 16 == 0 and w % 16 == 0 and h >= 256 and w >= 512
    assert tuple(frames[-1][0, 0]) == SUCCESS_RGB and tuple(frames[0][0, 0]) != SUCCESS_RGB
    assert tuple(episode_frames(steps, success=False)[-1][0, 0]) == FAILURE_RGB
    # the camera pixels are there, nearest-neighbour upscaled (8x8 blocks)
    f = compose_frame(steps[0], 8)
    ys, xs = np.nonzero((f != f[0, 0]).any(-1))
    block = f[ys.min():ys.min() + 8, xs.min():xs.min() + 8]
    assert (block == steps[0][0][0, 0]).all()


def test_video_is_written_atomically_and_reads_back(tmp_path):
    import imageio.v2 as imageio

    steps = [[np.full((SIZE, SIZE, 3), 20 * t, np.uint8)] * 2 for t in range(6)]
    path = write_episode_video(tmp_path / "v" / "ep0000_success.mp4", steps, success=True, horizon=5)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["ep0000_success.mp4"]
    frames = [f for f in imageio.get_reader(str(path))]  # (list() asks len(): inf for ffmpeg)
    assert len(frames) == 6 + HOLD_FRAMES
    assert frames[0].shape == episode_frames(steps, True, 5)[0].shape


# ---------------------------------------------------------------------------------------------------------
# checkpoint and env compatibility (no envs built)
# ---------------------------------------------------------------------------------------------------------

def _meta(**over):
    from visual_dr3.envs.make import env_args_for, render_settings

    meta = {"config": {"task": "lift"}, "image_keys": list(IMAGE_KEYS), "proprio_keys": list(PROPRIO_KEYS),
            "image_size": SIZE, "action_dim": 7, "env_args": env_args_for("lift", SIZE),
            "dataset_meta": {"task": "lift", "image_size": SIZE, "cameras": ["agentview", "robot0_eye_in_hand"],
                             "render": render_settings()}}
    meta.update(over)
    return meta


def test_resolve_env_args_accepts_matching_metadata():
    from visual_dr3.checkpoint import resolve_env_args

    env_args, notes = resolve_env_args(_meta())
    assert env_args["env_kwargs"]["camera_heights"] == SIZE and notes == []


@pytest.mark.parametrize("change, needle", [
    (lambda m: m["env_args"]["env_kwargs"].update(camera_heights=84, camera_widths=84), "trained on 32x32"),
    (lambda m: m["env_args"]["env_kwargs"].update(camera_names=["agentview"]), "robot0_eye_in_hand"),
    (lambda m: m["dataset_meta"]["render"].update(image_convention="opengl"), "image_convention='opengl'"),
    (lambda m: m["dataset_meta"]["render"].update(reflection=True), "reflection=True"),
    (lambda m: m["dataset_meta"].update(image_size=84), "image_size 84"),
    (lambda m: m["config"].update(task="pick_place"), "PickPlaceCan"),
])
def test_resolve_env_args_mismatch_is_one_line_user_error(change, needle):
    from visual_dr3.checkpoint import resolve_env_args

    meta = _meta()
    change(meta)
    with pytest.raises(UserError) as e:
        resolve_env_args(meta, where="ckpt")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_dataset_without_our_render_record_is_evaluated_with_robosuites_default_rendering():
    """A file made by other tools (robomimic's conversion renders with robosuite's defaults) carries no render
    record: its env_args say to render that way; ours say nothing (our fast rendering)."""
    from visual_dr3.checkpoint import resolve_env_args
    from visual_dr3.envs.make import FAST_RENDER_KEY

    meta = _meta()
    del meta["dataset_meta"]["render"]
    env_args, notes = resolve_env_args(meta, where="ckpt")
    assert env_args[FAST_RENDER_KEY] is False and FAST_RENDER_KEY not in meta["env_args"]  # a copy
    assert notes == ["ckpt: its dataset carries no visual-dr3 render settings (e.g. made by robomimic's tools): "
                     "evaluating with robosuite's default rendering (reflections, multisampling)"]
    assert FAST_RENDER_KEY not in resolve_env_args(_meta())[0]


def test_resolve_env_args_without_env_args_falls_back_to_the_task_env():
    from visual_dr3.checkpoint import resolve_env_args

    env_args, notes = resolve_env_args(_meta(env_args={}, dataset_meta={}))
    assert env_args["env_name"] == "Lift" and env_args["env_kwargs"]["camera_widths"] == SIZE
    assert any("no env_args" in n for n in notes)


def test_read_checkpoint_errors(tmp_path):
    from visual_dr3.checkpoint import read_checkpoint

    with pytest.raises(UserError, match="file not found"):
        read_checkpoint(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint\n")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        read_checkpoint(junk)
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, bare)
    with pytest.raises(UserError, match="no 'visual_dr3' metadata"):
        read_checkpoint(bare)
    partial = tmp_path / "partial.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "visual_dr3": {"config": {}}}, partial)
    with pytest.raises(UserError, match="lacks image_keys"):
        read_checkpoint(partial)


def test_resume_checkpoint_must_match_the_networks(tmp_path):
    from visual_dr3.checkpoint import check_resume_compatible
    from visual_dr3.learner.config import TrainConfig, to_dict

    cfg = TrainConfig()
    meta = {"config": to_dict(cfg), "image_keys": ["agentview_image"], "proprio_keys": [], "image_size": 48,
            "action_dim": 7, "env_args": {}}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "visual_dr3": meta, "global_step": 750}, path)
    assert check_resume_compatible(path, cfg, 48) == 750
    other = TrainConfig()
    other.model.feature_dim = 2 * cfg.model.feature_dim
    other.algorithm = "bc"
    with pytest.raises(UserError, match=r"^--resume .*last\.ckpt: made with another configuration \(algorithm: "
                                        r"checkpoint 'cql', now 'bc'; model: .*; expected a checkpoint of the same"):
        check_resume_compatible(path, other, 48)
    with pytest.raises(UserError, match="image_size: checkpoint 48, dataset 84"):
        check_resume_compatible(path, cfg, 84)
    # the KL's lagged policy: another weight resumes, turning it on (or off) does not
    with_kl = TrainConfig()
    with_kl.kl.coef = 0.1
    kl_path = tmp_path / "kl.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "global_step": 3,
                "visual_dr3": {**meta, "config": to_dict(with_kl)}}, kl_path)
    with_kl.kl.coef = 0.5
    assert check_resume_compatible(kl_path, with_kl, 48) == 3
    with pytest.raises(UserError, match=r"kl\.on: checkpoint True, now False"):
        check_resume_compatible(kl_path, cfg, 48)
    with pytest.raises(UserError, match=r"kl\.on: checkpoint False, now True"):
        check_resume_compatible(path, with_kl, 48)
    legacy = {**meta, "config": {k: v for k, v in to_dict(cfg).items() if k != "kl"}}  # before the KL option
    torch.save({"state_dict": {}, "hyper_parameters": {}, "visual_dr3": legacy}, tmp_path / "old.ckpt")
    assert check_resume_compatible(tmp_path / "old.ckpt", cfg, 48) == 0
    (tmp_path / "junk.ckpt").write_text("x")
    with pytest.raises(UserError, match=r"^--resume .*junk\.ckpt: not a PyTorch checkpoint"):
        check_resume_compatible(tmp_path / "junk.ckpt", cfg, 48)


# ---------------------------------------------------------------------------------------------------------
# the policy adapter
# ---------------------------------------------------------------------------------------------------------

def _module():
    from visual_dr3.learner.config import TrainConfig, to_dict
    from visual_dr3.learner.module import DR3CQL

    cfg = TrainConfig(task="lift")
    cfg.model.feature_dim, cfg.model.hidden_dims = 16, [16, 16]
    torch.manual_seed(0)
    return DR3CQL(to_dict(cfg), IMAGE_KEYS, PROPRIO_KEYS, 9, SIZE, 7, env_args=_meta()["env_args"]).eval()


def _obs(b, seed=0):
    rng = np.random.default_rng(seed)
    obs = {k: rng.integers(0, 255, (b, SIZE, SIZE, 3), dtype=np.uint8) for k in IMAGE_KEYS}
    obs["proprio"] = rng.normal(size=(b, 9)).astype(np.float32)
    return obs


def test_torch_policy_deterministic_equals_module_act():
    from visual_dr3.evaluation.rollout import TorchPolicy

    m = _module()
    obs = _obs(3)
    a = TorchPolicy(m, IMAGE_KEYS, deterministic=True)(obs, [0, 1, 2])
    t = {k: torch.from_numpy(obs[k]).permute(0, 3, 1, 2).contiguous() for k in IMAGE_KEYS}
    t["proprio"] = torch.from_numpy(obs["proprio"])
    assert a.shape == (3, 7) and a.dtype == np.float32
    np.testing.assert_allclose(a, m.act(t, deterministic=True).numpy(), rtol=1e-5, atol=1e-6)


def test_the_workers_copy_of_a_policy_acts_bit_for_bit_as_the_module():
    import pickle

    from visual_dr3.evaluation.rollout import TorchPolicy

    m = _module()
    obs = _obs(1, seed=4)
    for deterministic in (True, False):
        pol = TorchPolicy(m, IMAGE_KEYS, deterministic=deterministic)
        blob = pickle.dumps(pol.for_workers())
        copy = pickle.loads(blob)
        assert type(copy.module).__name__ == "ActingNets" and not hasattr(copy.module, "q")  # no critic sent
        for p in (pol, copy):
            p.start_episode(0, 123)
        for _ in range(3):  # same noise stream per episode, same numbers
            np.testing.assert_array_equal(pol(obs, [0]), copy(obs, [0]))


def test_torch_policy_noise_is_per_episode_not_per_batch():
    from visual_dr3.evaluation.rollout import TorchPolicy

    m = _module()
    obs = _obs(3)

    def actions(rows, steps=3):
        pol = TorchPolicy(m, IMAGE_KEYS, deterministic=False)
        for r in rows:
            pol.start_episode(r, episode_seed(0, r))
        sub = {k: v[rows] for k, v in obs.items()}
        return [pol(sub, rows) for _ in range(steps)]

    together = actions([0, 1, 2])  # three episodes in one batch (3 workers)
    alone = [actions([r]) for r in range(3)]  # each episode on its own (1 worker)
    for r in range(3):
        for t in range(3):
            np.testing.assert_allclose(together[t][r], alone[r][t][0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(together[0], together[1])  # fresh noise every step
    assert np.abs(together[0]).max() < 1.0


# ---------------------------------------------------------------------------------------------------------
# the pool on real envs
# ---------------------------------------------------------------------------------------------------------

class RecordingPolicy:
    """Constant action; remembers each episode's first observation (to compare initial states)."""

    def __init__(self):
        self.first: dict[int, np.ndarray] = {}
        self.started: list[int] = []
        self.batch_sizes: list[int] = []

    def start_episode(self, episode, seed):
        self.started.append(episode)
        self.first.pop(episode, None)

    def __call__(self, obs, episodes):
        self.batch_sizes.append(len(episodes))
        for row, e in enumerate(episodes):
            if e not in self.first:
                self.first[e] = np.concatenate([obs["proprio"][row]] + [obs[k][row].ravel() / 255.0 for k in IMAGE_KEYS])
        a = np.zeros((len(episodes), 7), np.float32)
        a[:, 2] = 0.5  # move up a little
        return a


def _pool(workers, **kw):
    from visual_dr3.envs.make import env_args_for
    from visual_dr3.evaluation.rollout import RolloutPool

    kw.setdefault("expect_image_size", SIZE)
    kw.setdefault("expect_proprio_dim", 9)
    kw.setdefault("horizon", 4)
    kw.setdefault("envs_per_worker", 1)  # one env per worker unless a test asks for more
    return RolloutPool(env_args_for("lift", SIZE), IMAGE_KEYS, PROPRIO_KEYS, workers=workers,
                       env_seed=env_seed_for(3), **kw)


@pytest.fixture(scope="module")
def one_worker_run():
    pol = RecordingPolicy()
    with _pool(1) as pool:
        run = pool.run(pol, 4, seed=3)
    return pol, run


def test_initial_states_depend_on_the_episode_not_on_the_worker_count(one_worker_run):
    pol1, run1 = one_worker_run
    pol2 = RecordingPolicy()
    with _pool(2) as pool:
        run2 = pool.run(pol2, 4, seed=3)
        # Every observation goes through the policy, in batches of at most the live workers. How many calls
        # see both workers depends on timing (the parent batches what is ready), so it is measured in
        # benchmarks/eval_speed.py (1.99 obs per call with 2 workers), not asserted here.
        assert sum(pol2.batch_sizes) == sum(r.length for r in run2.results) and max(pol2.batch_sizes) <= 2
        again = RecordingPolicy()
        run3 = pool.run(again, [2, 0], seed=3)  # workers are reused; other episode subset and order
    assert [r.episode for r in run1.results] == [0, 1, 2, 3] == [r.episode for r in run2.results]
    assert [r.seed for r in run1.results] == [episode_seed(3, i) for i in range(4)]
    assert [r.seed for r in run2.results] == [r.seed for r in run1.results]
    for e in range(4):
        np.testing.assert_array_equal(pol1.first[e], pol2.first[e])
    for e in (0, 2):
        np.testing.assert_array_equal(pol1.first[e], again.first[e])
    assert not np.array_equal(pol1.first[0], pol1.first[1])  # different episodes, different starts
    assert [(r.length, r.success) for r in run1.results] == [(r.length, r.success) for r in run2.results]
    assert all(r.length == 4 and r.attempts == 1 and r.error is None for r in run1.results)
    assert [r.episode for r in run3.results] == [0, 2]


def test_worker_crash_is_reported_replaced_and_retried_once(one_worker_run, tmp_path):
    from visual_dr3.evaluation.rollout import FaultSpec

    pol1, _ = one_worker_run
    lines: list[str] = []
    faults = [FaultSpec(episode=1, at_step=2, kind="exit", attempts=1),   # dies once: retried, then fine
              FaultSpec(episode=2, at_step=0, kind="raise", attempts=2)]  # raises twice: recorded as failed
    pol = RecordingPolicy()
    with _pool(2, faults=faults, warn=lines.append) as pool:
        run = pool.run(pol, 4, seed=3, video_episodes=[1, 2], video_dir=tmp_path)
    by_ep = {r.episode: r for r in run.results}
    assert sorted(by_ep) == [0, 1, 2, 3]  # nothing dropped
    assert by_ep[1].attempts == 2 and by_ep[1].error is None and by_ep[1].length == 4
    np.testing.assert_array_equal(pol.first[1], pol1.first[1])  # the retry restarts from the same seed
    assert by_ep[1].video is not None and tmp_path.joinpath(by_ep[1].video).is_file()
    assert by_ep[2].attempts == 2 and not by_ep[2].success and by_ep[2].video is None
    assert "injected fault at episode 2" in by_ep[2].error
    assert by_ep[0].attempts == 1 and by_ep[3].attempts == 1
    assert lines == run.warnings and len(lines) == 3
    ep1 = [ln for ln in lines if "episode 1 " in ln]
    ep2 = [ln for ln in lines if "episode 2 " in ln]  # (the order across episodes depends on timing)
    assert len(ep1) == 1 and "exited with code 3" in ep1[0] and "retrying" in ep1[0]
    assert len(ep2) == 2 and all("RuntimeError: injected fault" in ln for ln in ep2)
    assert "retrying" in ep2[0] and "recorded as failed" in ep2[1]
    s = summarize(run.records)
    assert s["episodes"] == 4 and s["errors"] == 1 and s["retried"] == 2


def test_with_the_policy_in_the_workers_a_dead_or_hung_worker_is_replaced_and_its_episode_retried(one_worker_run):
    from visual_dr3.evaluation.rollout import FaultSpec

    _, ref = one_worker_run
    lines: list[str] = []
    faults = [FaultSpec(episode=1, at_step=2, kind="exit"), FaultSpec(episode=2, at_step=1, kind="hang")]
    with _pool(1, faults=faults, warn=lines.append, step_timeout=3.0, policy_in_workers=True) as pool:
        run = pool.run(RecordingPolicy(), 4, seed=3)
    by_ep = {r.episode: r for r in run.results}
    assert [by_ep[e].attempts for e in range(4)] == [1, 2, 2, 1] and all(r.error is None for r in run.results)
    # the retries (fresh workers, given the policy when ready) replay the parent-mode run's episodes exactly
    assert [r.obs_digest for r in run.results] == [r.obs_digest for r in ref.results]
    assert len(lines) == 2 and "exited with code 3" in lines[0] and "no answer within 3 s" in lines[1]


def test_hung_worker_times_out_and_is_replaced():
    from visual_dr3.evaluation.rollout import FaultSpec

    lines: list[str] = []
    with _pool(1, faults=[FaultSpec(episode=0, at_step=1, kind="hang")], warn=lines.append,
               step_timeout=3.0) as pool:
        run = pool.run(RecordingPolicy(), 1, seed=0)
    assert run.results[0].attempts == 2 and run.results[0].error is None
    assert "no answer within 3 s" in lines[0]


def test_image_size_mismatch_with_the_env_is_a_user_error():
    with _pool(1, expect_image_size=48) as pool:
        with pytest.raises(UserError, match="is 32x32 but the policy was trained on 48x48"):
            pool.run(RecordingPolicy(), 1)


def test_a_pool_that_lost_its_worker_replaces_it_at_the_next_run():
    from visual_dr3.evaluation.rollout import FaultSpec

    lines: list[str] = []
    with _pool(1, faults=[FaultSpec(episode=0, at_step=1, kind="raise", attempts=2)], warn=lines.append) as pool:
        first = pool.run(RecordingPolicy(), [0], seed=3)
        assert first.results[0].error and first.results[0].length == 0  # failed at its first step, twice
        second = pool.run(RecordingPolicy(), [1], seed=3)  # the dead worker is replaced for this run
    assert second.results[0].error is None and second.results[0].length == 4
    assert len(lines) == 2 and "recorded as failed" in lines[1]


class TrajectoryPolicy:
    """Acts on what it sees (a P-controller on the end-effector height, gripper from the image mean), and
    keeps every observation of every episode, so any difference in pixels or state changes what it records."""

    def __init__(self):
        self.seen: dict[int, list[np.ndarray]] = {}

    def start_episode(self, episode, seed):
        self.seen[episode] = []

    def __call__(self, obs, episodes):
        a = np.zeros((len(episodes), 7), np.float32)
        for row, e in enumerate(episodes):
            flat = np.concatenate([obs["proprio"][row]] + [obs[k][row].ravel() / 255.0 for k in IMAGE_KEYS])
            self.seen[e].append(flat)
            a[row, 2] = np.clip(5.0 * (1.0 - obs["proprio"][row][2]), -1, 1)
            a[row, 6] = 1.0 if obs[IMAGE_KEYS[0]][row].mean() > 100 else -1.0
        return a


def test_two_envs_per_worker_and_the_policy_in_the_workers_give_the_same_trajectories_pixel_for_pixel():
    runs = {}
    # (2 workers x 2 envs covers the alternation of two envs in one worker and the spread over workers)
    for workers, envs, local in [(1, 1, False), (2, 2, False), (2, 2, True)]:
        pol = TrajectoryPolicy()
        with _pool(workers, envs_per_worker=envs, horizon=6, policy_in_workers=local) as pool:
            run = pool.run(pol, 5, seed=11)
        runs[workers, envs, local] = (pol, run)
        ready = [w.info["envs"] for w in pool.workers if w.info]  # (a slow worker may start after the last episode)
        assert ready and set(ready) == {1 if local else envs}  # in the workers: one env each
    ref_pol, ref_run = runs[1, 1, False]
    digests = [r.obs_digest for r in ref_run.results]
    assert len(set(digests)) == 5 and all(len(d) == 24 for d in digests)  # a fingerprint per episode
    for key, (pol, run) in runs.items():  # the same observations, pixel for pixel, whatever ran them
        assert [r.obs_digest for r in run.results] == digests, key
    local_pol, local_run = runs.pop((2, 2, True))
    assert local_pol.seen == {}  # the parent's policy never acted: each worker acted with its copy
    t = local_run.timing
    assert t.rows == t.calls == sum(r.length for r in local_run.results) and t.policy_seconds > 0
    assert all(len(ref_pol.seen[e]) == 6 for e in range(5))
    pol, run = runs[2, 2, False]
    assert [(r.episode, r.seed, r.length, r.success) for r in run.results] == \
        [(r.episode, r.seed, r.length, r.success) for r in ref_run.results]
    for e in range(5):  # every observation of every episode, images included, bit for bit
        assert len(pol.seen[e]) == len(ref_pol.seen[e])
        for a, b in zip(pol.seen[e], ref_pol.seen[e]):
            np.testing.assert_array_equal(a, b)
    t = run.timing  # the breakdown: the workers' env and render time and the parent's policy time
    assert t.rows == sum(r.length for r in run.results) and 1 <= t.calls <= t.rows
    assert t.env_seconds > 0 and t.render_seconds > 0 and t.policy_seconds > 0


def test_a_dead_worker_retries_the_episodes_of_both_its_envs(one_worker_run):
    from visual_dr3.evaluation.rollout import FaultSpec

    ref, base = one_worker_run  # episodes 0-3 of seed 3, one env, no fault
    lines: list[str] = []
    pol = RecordingPolicy()
    with _pool(1, envs_per_worker=2, faults=[FaultSpec(episode=1, at_step=2, kind="exit")],
               warn=lines.append) as pool:
        run = pool.run(pol, 3, seed=3)
    by_ep = {r.episode: r for r in run.results}
    assert sorted(by_ep) == [0, 1, 2] and all(r.error is None and r.length == 4 for r in run.results)
    # episode 1's worker died: episode 1 and the episode on the worker's other env (0) are both rerun
    assert by_ep[1].attempts == 2 and by_ep[0].attempts == 2 and by_ep[2].attempts == 1
    assert sum("exited with code 3" in ln and "retrying" in ln for ln in lines) == 2
    for e in range(3):
        np.testing.assert_array_equal(pol.first[e], ref.first[e])
    assert [(r.length, r.success) for r in run.results] == [(r.length, r.success) for r in base.results[:3]]


def test_envs_per_worker_never_builds_an_env_without_an_episode():
    from visual_dr3.evaluation.pool import envs_for

    assert [envs_for(e, w, 2) for e, w in [(5, 2), (4, 2), (3, 2), (2, 2), (1, 1), (50, 2)]] == [2, 2, 2, 1, 1, 2]
    assert envs_for(10, 1, 1) == 1 and envs_for(10, 1, 4) == 4 and envs_for(3, 1, 4) == 3


def test_envs_per_worker_has_one_default_everywhere():
    import inspect

    from visual_dr3.app.eval import build_parser
    from visual_dr3.evaluation.callback import EvalCallback
    from visual_dr3.evaluation.evaluate import evaluate_checkpoint
    from visual_dr3.evaluation.pool import ENVS_PER_WORKER
    from visual_dr3.learner.config import TrainConfig, validate

    defaults = {inspect.signature(f).parameters["envs_per_worker"].default for f in (EvalCallback, evaluate_checkpoint)}
    assert defaults == {ENVS_PER_WORKER} == {TrainConfig().eval_envs_per_worker}
    assert build_parser().parse_args(["--checkpoint", "c"]).envs_per_worker == ENVS_PER_WORKER
    with pytest.raises(UserError, match="eval_envs_per_worker"):
        validate(TrainConfig(eval_envs_per_worker=0))


def test_where_the_policy_acts_has_one_default_and_auto_picks_the_workers_when_they_fill_the_cpu():
    import inspect

    from visual_dr3.app.eval import build_parser
    from visual_dr3.evaluation.callback import EvalCallback
    from visual_dr3.evaluation.evaluate import evaluate_checkpoint
    from visual_dr3.evaluation.pool import POLICY_IN, policy_in_workers
    from visual_dr3.learner.config import TrainConfig, validate

    defaults = {inspect.signature(f).parameters["policy_in"].default for f in (EvalCallback, evaluate_checkpoint)}
    assert defaults == {POLICY_IN} == {TrainConfig().eval_policy_in} == {"auto"}
    assert build_parser().parse_args(["--checkpoint", "c"]).policy_in == POLICY_IN
    # auto: in the workers when the policy is on the CPU and the workers take every core
    assert [policy_in_workers("auto", "cpu", w, cores=2) for w in (1, 2, 3)] == [False, True, True]
    assert not policy_in_workers("auto", "cuda:0", 8, cores=2) and not policy_in_workers("auto", "cpu", 7, cores=8)
    assert policy_in_workers("workers", "cuda", 1, cores=8) and not policy_in_workers("parent", "cpu", 8, cores=2)
    with pytest.raises(UserError, match="--policy-in: got 'gpu'"):
        policy_in_workers("gpu", "cpu", 1)
    with pytest.raises(UserError, match="eval_policy_in"):
        validate(TrainConfig(eval_policy_in="gpu"))
    with pytest.raises(UserError, match="--policy-in"):
        EvalCallback(every_n_steps=1, episodes=1, policy_in="gpu")
