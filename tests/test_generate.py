"""Dataset generation: layout, semantics, determinism (seed and worker count), atomic writes, COG masks,
CLI errors, and a round trip through robomimic 0.3.0's own SequenceDataset."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)
from visual_dr3.data import generate as gen
from visual_dr3.data.hdf5_writer import DatasetWriter

SIZE = 32
HORIZON = 60  # short episodes: lift at sigma 0.1 succeeds in ~50 steps, sigma 0.6 mostly needs longer
REPO = Path(__file__).resolve().parents[1]
IMAGE_KEYS = ("agentview_image", "robot0_eye_in_hand_image")
PROPRIO = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


def _contents(path):
    """Every dataset's values and every attr of a file (not the file's bytes)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = v
        f.visititems(visit)
    return out


def _assert_same(a, b, skip_attrs=()):
    assert a.keys() == b.keys()
    for k in a:
        if k.split("@")[-1] in skip_attrs and "@" in k:
            continue
        va, vb = a[k], b[k]
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and np.array_equal(va, vb), k
        else:
            assert va == vb, k


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    """Two lift episodes made in-process: sigma 0.1 (succeeds) and 0.6 (fails within 60 steps)."""
    out = tmp_path_factory.mktemp("gen") / "lift_mixed.hdf5"
    summary = gen.generate_dataset("lift", 2, out, kind="mixed", image_size=SIZE, workers=1, seed=0,
                                   progress=False, horizon=HORIZON)
    return out, summary


def test_summary(mixed_file):
    out, s = mixed_file
    assert s["task"] == "lift" and s["kind"] == "mixed" and s["episodes"] == 2
    assert s["file_size"] == out.stat().st_size > 0
    assert 0 < s["transitions"] <= 2 * HORIZON and s["env_steps"] >= s["transitions"]
    assert s["success_rate"] == s["successes"] / 2 and s["seconds"] > 0 and s["env_steps_per_s"] > 0


def test_layout_matches_interfaces(mixed_file):
    out, s = mixed_file
    with h5py.File(out, "r") as f:
        data = f["data"]
        assert set(data.keys()) == {"demo_0", "demo_1"}
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "Lift" and env_args["type"] == 1 and "env_kwargs" in env_args
        assert env_args["env_kwargs"]["camera_heights"] == SIZE
        meta = json.loads(data.attrs["visual_dr3"])
        for key in ("task", "kind", "image_size", "cameras", "proprio_keys", "seed", "render", "episodes", "version"):
            assert key in meta
        assert meta["task"] == "lift" and meta["kind"] == "mixed" and meta["image_size"] == SIZE
        assert meta["cameras"] == ["agentview", "robot0_eye_in_hand"] and meta["episodes"] == 2
        assert meta["render"]["reflection"] is False and meta["render"]["offsamples"] == 0
        from visual_dr3.envs.scripted import SCRIPTED_VERSION

        assert meta["generator"] == "scripted" and meta["scripted_version"] == SCRIPTED_VERSION
        total = 0
        for name in ("demo_0", "demo_1"):
            d = data[name]
            T = int(d.attrs["num_samples"])
            total += T
            assert "<mujoco" in d.attrs["model_file"]
            assert d["actions"].shape == (T, 7) and d["actions"].dtype == np.float32
            assert d["rewards"].shape == (T,) and d["rewards"].dtype == np.float32
            assert d["dones"].shape == (T,)
            assert d["states"].shape[0] == T and d["states"].ndim == 2
            for k in IMAGE_KEYS:
                ds = d["obs"][k]
                assert ds.shape == (T, SIZE, SIZE, 3) and ds.dtype == np.uint8
                assert ds.chunks == (1, SIZE, SIZE, 3) and ds.compression in ("lzf", "gzip")
            for k, dim in PROPRIO.items():
                assert d["obs"][k].shape == (T, dim)
            assert np.all(np.abs(d["actions"][()]) <= 1.0)
        assert data.attrs["total"] == total == s["transitions"]
        train = [n.decode() for n in f["mask/train"][()]]
        valid = [n.decode() for n in f["mask/valid"][()]]
        assert len(train) >= 1 and len(valid) >= 1 and sorted(train + valid) == ["demo_0", "demo_1"]


def test_rewards_and_dones(mixed_file):
    out, s = mixed_file
    with h5py.File(out, "r") as f:
        outcomes = []
        for name in f["data"]:
            d = f["data"][name]
            r, done = d["rewards"][()], d["dones"][()]
            success = bool(d.attrs["success"])
            outcomes.append(success)
            if success:  # reward 1 and done 1 exactly at the last step
                assert r[-1] == 1.0 and done[-1] == 1
                assert np.all(r[:-1] == 0) and np.all(done[:-1] == 0)
            else:  # a failure runs to the horizon; no reward, no terminal
                assert np.all(r == 0) and np.all(done == 0) and len(r) == HORIZON
    assert outcomes == [True, False]  # sigma 0.1 succeeds, sigma 0.6 does not within 60 steps
    assert s["successes"] == 1


def test_cli_with_two_workers_writes_the_same_datasets(mixed_file, tmp_path):
    """The real CLI in a subprocess, 2 workers: same seed -> same contents as the in-process, 1-worker file."""
    out, _ = mixed_file
    other = tmp_path / "cli.hdf5"
    cmd = [sys.executable, "-m", "visual_dr3.data.generate", "--task", "lift", "--episodes", "2",
           "--image-size", str(SIZE), "--out", str(other), "--workers", "2", "--seed", "0",
           "--horizon", str(HORIZON), "--kind", "mixed"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "success rate 50.0% (1/2)" in res.stdout and "steps/s" in res.stdout
    assert "2 workers" in res.stdout
    a, b = _contents(out), _contents(other)
    _assert_same(a, b)
    meta_a = json.loads(h5py.File(out, "r")["data"].attrs["visual_dr3"])
    meta_b = json.loads(h5py.File(other, "r")["data"].attrs["visual_dr3"])
    assert meta_a == meta_b


def test_episode_seeds_depend_on_seed_and_index():
    assert gen.episode_seeds(0, 0) == gen.episode_seeds(0, 0)
    assert len({gen.episode_seeds(0, 0), gen.episode_seeds(0, 1), gen.episode_seeds(1, 0),
                gen.episode_seeds(0, 0, 1)}) == 4
    train, valid = gen.split_masks(20, seed=0)
    assert len(valid) == 2 and sorted(train + valid) == list(range(20))
    assert gen.split_masks(20, seed=0) == (train, valid)
    assert gen.split_masks(1, seed=0) == ([0], [])


def test_cog_masks_and_prior_rewards(tmp_path):
    out = tmp_path / "cog.hdf5"
    s = gen.generate_dataset("lift", 2, out, kind="cog", image_size=SIZE, workers=1, seed=0, progress=False)
    assert s["prior_episodes"] == 1 and s["task_episodes"] == 1
    with h5py.File(out, "r") as f:
        prior = [n.decode() for n in f["mask/prior"][()]]
        task = [n.decode() for n in f["mask/task"][()]]
        assert prior == ["demo_0"] and task == ["demo_1"]
        p, t = f["data/demo_0"], f["data/demo_1"]
        assert p.attrs["role"] == "prior" and t.attrs["role"] == "task"
        assert np.all(p["rewards"][()] == 0) and np.all(p["dones"][()] == 0)
        # the prior ends holding the cube; the task demo starts from a grasped state: gripper closed
        # on the cube (finger joints apart, not fully shut), so it is short and ends in success
        assert np.all(t["actions"][:, 6] == 1.0)
        assert t.attrs["success"] == 1 and t["rewards"][-1] == 1 and t["dones"][-1] == 1
        assert t.attrs["num_samples"] < 30
        q = t["obs/robot0_gripper_qpos"][0]
        assert q[0] - q[1] > 0.03  # fingers held apart by the 4 cm cube
        assert json.loads(f["data"].attrs["visual_dr3"])["kind"] == "cog"


def test_stitch_modes_masks_and_facts(tmp_path):
    """The stitch kind: one episode of each mode; no episode from an initial state reaches success; the task
    episode starts at the grasped cube; the decoys close away from the cube; the facts are in the file."""
    out = tmp_path / "stitch.hdf5"
    s = gen.generate_dataset("lift", 4, out, kind="stitch", image_size=SIZE, workers=1, seed=0, progress=False)
    st = s["stitch"]
    assert st["modes"] == {"release": 1, "decoy0": 1, "decoy1": 1, "task": 1}
    assert st["episodes_from_initial_state_to_success"] == 0 and s["successes"] == 1
    with h5py.File(out, "r") as f:
        masks = {k: [n.decode() for n in f[f"mask/{k}"][()]] for k in ("prior", "task", "release", "decoy")}
        assert masks == {"prior": ["demo_0", "demo_1", "demo_2"], "task": ["demo_3"], "release": ["demo_0"],
                         "decoy": ["demo_1", "demo_2"]}
        meta = json.loads(f["data"].attrs["visual_dr3"])
        assert meta["kind"] == "stitch" and meta["stitch"] == st
        grasp_xy = []
        for i, role in enumerate(("release", "decoy0", "decoy1")):
            d = f[f"data/demo_{i}"]
            assert d.attrs["role"] == role and d.attrs["start_step"] == 0
            assert np.all(d["rewards"][()] == 0) and np.all(d["dones"][()] == 0)
            a = d["actions"][()]
            closed = np.nonzero(a[:, 6] == 1.0)[0]
            assert len(closed) > 0 and a[-1, 6] == -1.0  # a grasp, then open again
            assert np.all(a[closed, 2] <= 0)  # never up while closing
            eef = d["obs/robot0_eef_pos"][()]
            grasp_xy.append(eef[closed[0], :2])
            assert eef[-1, 2] > eef[closed[-1], 2] + 0.05  # retreated up at the end
        # the decoys close on the table beside the cube (>= 9 cm from where the cube can be), not on it
        assert min(np.linalg.norm(grasp_xy[k] - grasp_xy[0]) for k in (1, 2)) > 0.08
        t = f["data/demo_3"]
        assert t.attrs["role"] == "task" and t.attrs["start_step"] == st["task_start_steps"][0] > 20
        assert np.all(t["actions"][:, 6] == 1.0) and t["rewards"][-1] == 1 and t["dones"][-1] == 1
        q = t["obs/robot0_gripper_qpos"][0]
        assert q[0] - q[1] > 0.03  # starts with the fingers held apart by the cube
    lines = gen.format_summary(s).splitlines()
    assert lines[2] == "modes: release 1 (25%), decoy0 1 (25%), decoy1 1 (25%), task 1 (25%)"
    assert lines[3].endswith("episodes from an initial state to success: 0")
    with pytest.raises(gen.UserError, match="--kind stitch: built for --task lift only"):
        gen.episode_plan(gen.get_task("pick_place"), "stitch", 0)


def _tiny_demo(T=3):
    return dict(actions=np.zeros((T, 7), np.float32), rewards=np.zeros(T, np.float32), dones=np.zeros(T),
                states=np.zeros((T, 5)), obs={"agentview_image": np.zeros((T, 8, 8, 3), np.uint8)})


def test_atomic_write_keeps_an_existing_file_on_error(tmp_path):
    target = tmp_path / "d.hdf5"
    target.write_bytes(b"previous contents")
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(target, {"env_name": "Lift"}, {"task": "lift"}) as w:
            w.add_demo(**_tiny_demo())
            assert Path(w.tmp_path).exists() and Path(w.tmp_path).parent == tmp_path
            raise RuntimeError("boom")
    assert target.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.hdf5"]
    # and a clean exit replaces it
    with DatasetWriter(target, {"env_name": "Lift"}, {"task": "lift"}) as w:
        w.add_demo(**_tiny_demo())
        w.set_mask("train", ["demo_0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.hdf5"]
    with h5py.File(target, "r") as f:
        assert f["data"].attrs["total"] == 3 and list(f["mask/train"][()]) == [b"demo_0"]


def test_generator_failure_mid_write_leaves_target_intact(tmp_path, monkeypatch):
    target = tmp_path / "lift.hdf5"
    target.write_bytes(b"keep me")
    real = gen.run_episode

    def flaky(env, spec, kind, seed, index, horizon=None):
        if index == 1:
            raise RuntimeError("worker crashed")
        return real(env, spec, kind, seed, index, horizon)

    monkeypatch.setattr(gen, "run_episode", flaky)
    with pytest.raises(RuntimeError, match="worker crashed"):
        gen.generate_dataset("lift", 2, target, image_size=SIZE, workers=1, seed=0, progress=False, horizon=5)
    assert target.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["lift.hdf5"]


def test_a_ctrl_c_inside_a_library_that_catches_everything_still_stops_generation(tmp_path, monkeypatch):
    """A KeyboardInterrupt raised by the signal where a library catches everything (a bare ``except``, a weakref
    callback: "Exception ignored") is lost; generation takes Ctrl-C as a flag instead and stops at the next episode,
    leaving no file (seen in CI: Ctrl-C, then all 40 episodes written, exit 0)."""
    import os
    import signal

    real, ran = gen.run_episode, []

    def swallowing(env, spec, kind, seed, index, horizon=None):
        ran.append(index)
        if index == 0:
            try:
                os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, in this frame
                for _ in range(1000):
                    pass
            except BaseException:  # what a careless library does
                pass
        return real(env, spec, kind, seed, index, horizon)

    monkeypatch.setattr(gen, "run_episode", swallowing)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            gen.generate_dataset("lift", 3, tmp_path / "d.hdf5", image_size=SIZE, workers=1, progress=False,
                                 horizon=5)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    finally:
        signal.signal(signal.SIGINT, before)
    assert ran == [0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, expected", [
    (["--episodes", "0"], "--episodes: got 0; expected an integer >= 1"),
    (["--kind", "random"], "--kind: unknown kind 'random'; expected one of expert, mixed, cog, stitch"),
    (["--task", "drawer"], "unknown task 'drawer' (known: lift, pick_place, stack)"),
    (["--image-size", "4"], "--image-size: got 4; expected an integer >= 8"),
    (["--episodes", "two"], "argument --episodes: invalid int value: 'two'"),
])
def test_bad_flags_are_one_line_errors(argv, expected, tmp_path, capsys):
    base = {"--task": "lift", "--episodes": "2", "--out": str(tmp_path / "x.hdf5")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = [x for kv in base.items() for x in kv]
    with pytest.raises(SystemExit) as e:
        gen.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {expected}\n"
    assert not (tmp_path / "x.hdf5").exists()


def test_cog_horizon_too_short_for_the_grasp_is_a_one_line_error(tmp_path, capsys):
    # episode 1 of cog data is a task demo, recorded from the grasp on: 5 steps never reach it
    out = tmp_path / "cog.hdf5"
    with pytest.raises(SystemExit) as e:
        gen.main(["--task", "lift", "--kind", "cog", "--episodes", "2", "--horizon", "5", "--image-size",
                  str(SIZE), "--out", str(out), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == ("error: --horizon 5: cog episode 1 (task) recorded no step in 5 attempts (the scripted policy "
                   "did not reach the grasp in 5 steps); expected a longer --horizon (the lift default is 120)\n")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_folder_is_a_user_error(tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    with pytest.raises(SystemExit) as e:
        gen.main(["--task", "lift", "--episodes", "1", "--out", str(blocker / "d.hdf5")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out: cannot create folder") and err.count("\n") == 1


def _import_robomimic():
    """robomimic 0.3.0 imports mujoco_py at top level in its env module: the benchmarks' stand-in handles it."""
    from benchmarks.robomimic_cmp import import_robomimic

    import_robomimic()
    import robomimic.utils.file_utils as FileUtils
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    return FileUtils, ObsUtils, SequenceDataset


def test_robomimic_sequence_dataset_round_trip(mixed_file):
    out, _ = mixed_file
    FileUtils, ObsUtils, SequenceDataset = _import_robomimic()
    ObsUtils.initialize_obs_utils_with_obs_specs(
        {"obs": {"low_dim": list(PROPRIO), "rgb": list(IMAGE_KEYS)}}
    )
    env_meta = FileUtils.get_env_metadata_from_dataset(str(out))
    assert env_meta["env_name"] == "Lift" and env_meta["type"] == 1
    for filter_key in (None, "train", "valid"):
        with h5py.File(out, "r") as f:  # what we wrote (closed again before robomimic opens the file)
            names = ["demo_0", "demo_1"] if filter_key is None else [n.decode() for n in f[f"mask/{filter_key}"]]
            n_total = sum(int(f[f"data/{n}"].attrs["num_samples"]) for n in names)
            first = f[f"data/{names[0]}"]
            T = int(first.attrs["num_samples"])
            want = {i: {"obs": {k: first[f"obs/{k}"][i] for k in (*PROPRIO, *IMAGE_KEYS)},
                        **{k: first[k][i] for k in ("actions", "rewards", "dones")}} for i in (0, T - 1)}
        ds = SequenceDataset(
            hdf5_path=str(out), obs_keys=list(PROPRIO) + list(IMAGE_KEYS),
            dataset_keys=["actions", "rewards", "dones"], seq_length=1, frame_stack=1,
            hdf5_cache_mode=None, hdf5_use_swmr=True, load_next_obs=False, filter_by_attribute=filter_key,
        )
        assert len(ds) == n_total
        for idx, w in want.items():  # first and last step of the first demo
            item = ds[idx]
            for k in IMAGE_KEYS:
                assert item["obs"][k].shape == (1, SIZE, SIZE, 3) and item["obs"][k].dtype == np.uint8
                np.testing.assert_array_equal(item["obs"][k][0], w["obs"][k])
            for k, dim in PROPRIO.items():
                assert item["obs"][k].shape == (1, dim)
                np.testing.assert_array_equal(item["obs"][k][0], w["obs"][k])
            np.testing.assert_array_equal(item["actions"][0], w["actions"])
            assert item["rewards"][0] == w["rewards"] and item["dones"][0] == w["dones"]
        ds.close_and_delete_hdf5_handle()


def test_ctrl_c_during_generation_is_one_line_exit_130_and_leaves_no_file(tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the whole process group: parent and workers."""
    import os
    import re
    import signal
    import time

    out = tmp_path / "d.hdf5"
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "visual_dr3.data.generate", "--task", "lift", "--episodes", "40", "--kind",
             "expert", "--image-size", str(SIZE), "--workers", "2", "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, start_new_session=True,
            # a shell's background job starts with SIGINT ignored; a terminal's foreground job does not
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        # any finished episode (tqdm may skip drawing "1/40" when two workers finish together)
        while not re.search(r"\| *[1-9][0-9]*/40", (tmp_path / "err.txt").read_text()):
            assert proc.poll() is None, "generation ended before the Ctrl-C"
            assert time.time() < deadline, "no episode within 120 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = (tmp_path / "err.txt").read_text()
    assert rc == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == "interrupted (Ctrl-C)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["err.txt"]  # no dataset, no temp file


def test_ctrl_c_is_a_flag_inside_generation_and_a_second_one_raises_at_once():
    import os
    import signal

    from visual_dr3.errors import raise_if_ctrl_c, remembered_ctrl_c

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with remembered_ctrl_c():
            raise_if_ctrl_c()  # nothing yet
            os.kill(os.getpid(), signal.SIGINT)  # the first: remembered, not raised here
            for _ in range(1000):
                pass
            with pytest.raises(KeyboardInterrupt):
                raise_if_ctrl_c()
            with pytest.raises(KeyboardInterrupt):  # the second: at once
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        raise_if_ctrl_c()  # the flag is cleared on the way out
    finally:
        signal.signal(signal.SIGINT, before)
