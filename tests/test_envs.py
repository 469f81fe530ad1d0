"""Task registry, env construction (render settings, upright images, seeding) and scripted policies."""

import json
from pathlib import Path

import numpy as np
import pytest

import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)
from visual_dr3.envs.tasks import TASKS, default_dataset_path, get_task, image_key
from visual_dr3.errors import UserError

SIZE = 32


def test_registry_knows_the_three_tasks():
    assert list(TASKS) == ["lift", "pick_place", "stack"]
    assert {t.env_name for t in TASKS.values()} == {"Lift", "PickPlaceCan", "Stack"}
    for spec in TASKS.values():
        assert spec.cameras == ("agentview", "robot0_eye_in_hand")
        assert spec.image_keys == ("agentview_image", "robot0_eye_in_hand_image")
        assert spec.proprio_keys == ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
        assert spec.action_dim == 7 and spec.horizon > 0 and spec.default_episodes > 0
    assert get_task("lift") is TASKS["lift"] and get_task(TASKS["stack"]) is TASKS["stack"]
    assert image_key("agentview") == "agentview_image"
    assert default_dataset_path("lift") == Path("data/lift_mixed.hdf5")
    assert default_dataset_path("stack", "cog") == Path("data/stack_cog.hdf5")


def test_unknown_task_is_a_one_line_user_error():
    with pytest.raises(UserError) as e:
        get_task("drawer")
    assert str(e.value) == "unknown task 'drawer' (known: lift, pick_place, stack)"


@pytest.fixture(scope="module")
def lift_env():
    from visual_dr3.envs.make import make_env

    env = make_env("lift", image_size=SIZE, seed=0)
    yield env
    env.close()


def test_make_env_gives_upright_uint8_images_and_proprio(lift_env):
    from visual_dr3.envs.make import reset_env

    obs = reset_env(lift_env, 0)
    spec = get_task("lift")
    for cam in spec.cameras:
        img = obs[image_key(cam)]
        assert img.dtype == np.uint8 and img.shape == (SIZE, SIZE, 3)
        # upright = OpenGL's bottom-up frame flipped vertically (robosuite's "opencv" convention)
        raw = lift_env.sim.render(width=SIZE, height=SIZE, camera_name=cam)
        np.testing.assert_array_equal(img, raw[::-1])
    # and by content: agentview has the dark robot/floor at the top and the white table at the bottom;
    # the wrist camera has the dark gripper fingers at the bottom and the table at the top.
    agent = obs["agentview_image"].astype(float).mean(axis=(1, 2))
    wrist = obs["robot0_eye_in_hand_image"].astype(float).mean(axis=(1, 2))
    q = SIZE // 4
    assert agent[-q:].mean() > agent[:q].mean() + 20
    assert wrist[:q].mean() > wrist[-q:].mean() + 20
    assert obs["robot0_eef_pos"].shape == (3,)
    assert obs["robot0_eef_quat"].shape == (4,)
    assert obs["robot0_gripper_qpos"].shape == (2,)


def test_render_settings_are_applied(lift_env):
    import mujoco

    from visual_dr3.envs.make import render_flags, render_settings

    ctx = lift_env.sim._render_context_offscreen
    assert ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] == 0
    assert lift_env.sim.model.vis.quality.offsamples == 0
    assert ctx.con.offSamples == 0
    assert render_flags(lift_env) == {"reflection": False, "offsamples": 0, "image_convention": "opencv"}
    s = render_settings()
    assert s["reflection"] is False and s["offsamples"] == 0 and s["image_convention"] == "opencv"
    assert lift_env.hard_reset is False


def test_same_seed_same_initial_state_regardless_of_history(lift_env):
    from visual_dr3.envs.make import reset_env, sim_state

    first = reset_env(lift_env, 5)["cube_pos"].copy()
    s_first = sim_state(lift_env)
    other = reset_env(lift_env, 6)["cube_pos"].copy()
    for _ in range(5):
        lift_env.step(np.array([0.5, 0.5, -0.5, 0, 0, 0, 1.0]))
    again = reset_env(lift_env, 5)["cube_pos"].copy()
    assert not np.allclose(first, other)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(s_first, sim_state(lift_env))


def test_env_args_rebuild_the_same_env(lift_env):
    from visual_dr3.envs.make import env_args_for, make_env_from_args, model_xml, reset_env, sim_state

    args = json.loads(json.dumps(env_args_for("lift", SIZE, seed=0)))  # as stored in a file
    assert args["env_name"] == "Lift" and args["type"] == 1
    kw = args["env_kwargs"]
    assert kw["camera_heights"] == kw["camera_widths"] == SIZE and kw["hard_reset"] is False
    assert kw["camera_names"] == ["agentview", "robot0_eye_in_hand"] and kw["reward_shaping"] is False
    env = make_env_from_args(args)
    try:
        a = reset_env(env, 3)
        b = reset_env(lift_env, 3)
        np.testing.assert_array_equal(sim_state(env), sim_state(lift_env))
        np.testing.assert_array_equal(a["agentview_image"], b["agentview_image"])
        assert model_xml(env) == model_xml(lift_env)
    finally:
        env.close()


def _run(env, task, sigma, seed, mode="full"):
    from visual_dr3.envs.make import reset_env
    from visual_dr3.envs.scripted import make_policy

    obs = reset_env(env, seed)
    policy = make_policy(task, env, sigma=sigma, rng=np.random.default_rng(seed), mode=mode)
    for t in range(get_task(task).horizon):
        action = policy(obs)
        assert action.shape == (7,) and np.all(np.abs(action) <= 1.0)
        obs, _, _, _ = env.step(action)
        if env._check_success():
            return True, t + 1, policy
        if mode == "prior" and policy.finished:
            return False, t + 1, policy
    return False, t + 1, policy


def test_scripted_lift_succeeds_without_noise(lift_env):
    for seed in (0, 1):
        ok, steps, _ = _run(lift_env, "lift", 0.0, seed)
        assert ok and steps < 70


def test_scripted_lift_prior_grasps_but_never_succeeds(lift_env):
    ok, steps, policy = _run(lift_env, "lift", 0.0, 0, mode="prior")
    assert not ok and policy.grasped and policy.finished
    # the cube is held between the fingers: gripper closed on an object, not fully shut
    assert lift_env._check_grasp(gripper=lift_env.robots[0].gripper, object_geoms=lift_env.cube)


@pytest.mark.parametrize("task", ["pick_place", "stack"])
def test_scripted_policies_succeed_without_noise(task):
    from visual_dr3.envs.make import env_args_for, make_env_from_args

    # no cameras: the policies read the simulator, and this keeps the test fast
    env = make_env_from_args(env_args_for(task, SIZE, seed=0), use_camera_obs=False, has_offscreen_renderer=False)
    try:
        ok, steps, _ = _run(env, task, 0.0, 0)
        assert ok, f"{task} scripted policy failed without noise ({steps} steps)"
        ok, _, policy = _run(env, task, 0.0, 1, mode="prior")
        assert not ok and policy.grasped and policy.finished
    finally:
        env.close()


def test_scripted_aim_offset_is_drawn_per_episode_within_its_radius(lift_env):
    from visual_dr3.envs.scripted import LiftPolicy, PickPlaceCanPolicy, StackPolicy

    assert (LiftPolicy.AIM_RADIUS, PickPlaceCanPolicy.AIM_RADIUS, StackPolicy.AIM_RADIUS) == (0.012, 0.01, 0.0)
    aims = []
    policy = LiftPolicy(lift_env, rng=np.random.default_rng(5))
    for _ in range(200):
        policy.reset()
        aims.append(policy.aim.copy())
    aims = np.array(aims)
    assert np.all(aims[:, 2] == 0) and np.all(np.linalg.norm(aims[:, :2], axis=1) <= 0.012)
    assert np.linalg.norm(aims[:, :2], axis=1).max() > 0.011  # the whole disk, not a point
    assert (LiftPolicy.CLOSE_BAND, PickPlaceCanPolicy.CLOSE_BAND, StackPolicy.CLOSE_BAND) == (None, None, None)
    # the same rng seed gives the same aims (generated datasets stay a function of their seed)
    again = LiftPolicy(lift_env, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(again.aim, LiftPolicy(lift_env, rng=np.random.default_rng(5)).aim)


def test_scripted_lift_closes_at_the_grasp_height_and_lifts_once_the_fingers_stop(lift_env):
    from visual_dr3.envs.make import reset_env
    from visual_dr3.envs.scripted import make_policy

    obs = reset_env(lift_env, 2)
    policy = make_policy("lift", lift_env, sigma=0.0, rng=np.random.default_rng(2))
    phases, widths, heights = [], [], []
    for _ in range(get_task("lift").horizon):
        cube_z = policy.body_pos(lift_env.cube_body_id)[2]
        heights.append(policy.eef_pos()[2] - cube_z)
        action = policy(obs)
        phases.append(policy.phase)
        widths.append(policy.gripper_width())
        obs, _, _, _ = lift_env.step(action)
        if lift_env._check_success():
            break
    assert lift_env._check_success()
    phases = np.array(phases)
    first_close = int(np.argmax(phases == 2))
    # closing starts at one height, level with the cube's centre (12 mm over the grasp point, which lies below
    # where the fingertips touch the table), whatever the xy offset: "start closing" is a function of the
    # frame; the hand goes on down while the fingers close
    assert (policy.GRASP_DZ, policy.CLOSE_DZ, policy.close_tol) == (-0.012, 0.012, None)
    assert heights[first_close] < 0 <= heights[first_close - 1]
    assert all(h >= 0 for h in heights[:first_close])
    closing = int((phases == 2).sum())
    assert heights[first_close + closing - 1] < heights[first_close] - 0.003
    assert 3 <= closing < 10  # ended by the fingers stopping, before the 10-step limit
    lift = first_close + closing  # the first lifting step: the width did not change since the last step
    assert phases[lift] == 3 and abs(widths[lift] - widths[lift - 1]) < 5e-4
    assert abs(widths[first_close + 2] - widths[first_close + 1]) > 5e-4  # while closing it did


def test_scripted_pick_place_starts_closing_at_one_height_over_the_can():
    from visual_dr3.envs.make import env_args_for, make_env_from_args, reset_env
    from visual_dr3.envs.scripted import make_policy

    env = make_env_from_args(env_args_for("pick_place", SIZE, seed=0), use_camera_obs=False,
                             has_offscreen_renderer=False)
    try:
        for seed in (0, 1):
            obs = reset_env(env, seed)
            policy = make_policy("pick_place", env, sigma=0.05, rng=np.random.default_rng(seed))
            assert (policy.GRASP_DZ, policy.CLOSE_DZ, policy.close_tol) == (-0.015, 0.03, None)
            phases, heights = [], []
            while policy.phase < 3:
                can_z = policy.body_pos(env.obj_body_id[env.obj_to_use])[2]
                heights.append(policy.eef_pos()[2] - can_z)
                action = policy(obs)
                phases.append(policy.phase)
                obs, _, _, _ = env.step(action)
                assert len(phases) < 200, "the grasp did not end"
            first_close = phases.index(2)
            # the first closing frame is the first one under 1.5 cm over the can's centre (noise or not), before
            # the hand reaches the can: every open frame below that height is labelled "close"
            assert heights[first_close] < 0.015 <= min(heights[:first_close])
            assert heights[first_close] > 0.008
            assert policy.grasped and phases[first_close - 1] == 1
    finally:
        env.close()


def test_datasets_of_an_older_scripted_policy_are_recognised(tmp_path):
    import h5py

    from visual_dr3.data.generate import made_by_older_script
    from visual_dr3.envs.scripted import SCRIPTED_VERSION

    def write(name, meta):
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            g = f.create_group("data")
            if meta is not None:
                g.attrs["visual_dr3"] = json.dumps(meta)
        return path

    assert made_by_older_script(write("v1.hdf5", {"generator": "scripted"}))  # before the version was stored
    assert made_by_older_script(write("old.hdf5", {"generator": "scripted", "scripted_version": SCRIPTED_VERSION - 1}))
    assert not made_by_older_script(write("now.hdf5", {"generator": "scripted", "scripted_version": SCRIPTED_VERSION}))
    assert not made_by_older_script(write("robomimic.hdf5", None))  # not ours: used as it is
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    assert not made_by_older_script(tmp_path / "junk.hdf5")
