"""Your own data: a file laid out by robomimic's own conversion script (``dataset_states_to_obs.py`` of robomimic
0.3.0, run for real on a states-only source, 84x84 images in robomimic's orientation) trains through ``train.py``
and evaluates from its ``env_args``; what ``train.py`` says when such a file does not fit the task."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: robomimic 0.3.0's ``dataset_states_to_obs`` in a fresh process (robosuite's own image convention, "opengl",
#: which robomimic flips upright). Its EnvRobosuite imports ``mujoco_py`` (the binding of robosuite < 1.4, unused by
#: its code on robosuite >= 1.4) and, to pick a GPU for offscreen rendering, ``egl_probe``: neither installs beside
#: robosuite 1.5.2, so both are empty modules here; everything else is robomimic's and robosuite's own code.
CONVERT = r'''
import argparse, sys, types
sys.modules["mujoco_py"] = types.ModuleType("mujoco_py")
egl = types.ModuleType("egl_probe")
egl.get_available_devices = lambda: []
sys.modules["egl_probe"] = egl
import robosuite.macros
assert robosuite.macros.IMAGE_CONVENTION == "opengl", robosuite.macros.IMAGE_CONVENTION
from robomimic.scripts.dataset_states_to_obs import dataset_states_to_obs
dataset_states_to_obs(argparse.Namespace(
    dataset=sys.argv[1], output_name=sys.argv[2], n=None, shaped=False,
    camera_names=["agentview", "robot0_eye_in_hand"], camera_height=84, camera_width=84, done_mode=2,
    copy_rewards=False, copy_dones=False, exclude_next_obs=False, compress=False))
'''


def _env():
    return dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))


@pytest.fixture(scope="module")
def robomimic_file(lift_expert_dataset, tmp_path_factory):
    """robomimic's image file of two lift demos: the source holds what robosuite's demo collection plus robomimic's
    ``convert_robosuite.py`` / ``split_train_val.py`` leave (``states``, ``actions``, ``model_file``, ``env_args``,
    ``mask/train`` and ``mask/valid``), here taken from two scripted demos."""
    d = tmp_path_factory.mktemp("robomimic")
    src = d / "demo.hdf5"
    with h5py.File(lift_expert_dataset, "r") as fi, h5py.File(src, "w") as fo:
        data = fo.create_group("data")
        data.attrs["env_args"] = fi["data"].attrs["env_args"]
        for name in ("demo_0", "demo_1"):
            g = data.create_group(name)
            for key in ("states", "actions"):
                g.create_dataset(key, data=fi["data"][name][key][()])
            g.attrs["model_file"] = fi["data"][name].attrs["model_file"]
        fo.create_dataset("mask/train", data=np.array([b"demo_0"]))
        fo.create_dataset("mask/valid", data=np.array([b"demo_1"]))
    script = d / "convert.py"
    script.write_text(CONVERT)
    r = subprocess.run([sys.executable, str(script), str(src), "image_84.hdf5"], cwd=d, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Wrote 2 trajectories" in r.stdout
    return d / "image_84.hdf5"


def test_robomimic_conversion_layout_and_orientation(robomimic_file, lift_expert_dataset):
    """What robomimic's file holds (so docs/own-data.md lists it truthfully), and its images are upright: the
    same scene as our own (upright, 32 px) frames of the same states, not their vertical flip."""
    import torch
    import torch.nn.functional as F

    with h5py.File(robomimic_file, "r") as f, h5py.File(lift_expert_dataset, "r") as ours:
        data = f["data"]
        assert set(data.attrs) == {"total", "env_args"} and set(f["mask"]) == {"train", "valid"}
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "Lift" and env_args["type"] == 1
        kw = env_args["env_kwargs"]
        assert (kw["camera_names"], kw["camera_heights"], kw["camera_widths"]) == (
            ["agentview", "robot0_eye_in_hand"], 84, 84)
        g = data["demo_0"]
        assert set(g) == {"actions", "dones", "rewards", "states", "obs", "next_obs"}
        assert set(g.attrs) == {"model_file", "num_samples"}
        assert {"agentview_image", "robot0_eye_in_hand_image", "object", "robot0_eef_pos", "robot0_eef_quat",
                "robot0_gripper_qpos"} <= set(g["obs"]) and set(g["next_obs"]) == set(g["obs"])
        T = int(g.attrs["num_samples"])
        assert g["obs/agentview_image"].shape == (T, 84, 84, 3) and g["obs/agentview_image"].dtype == np.uint8
        assert data.attrs["total"] == T + int(data["demo_1"].attrs["num_samples"])
        assert g["dones"][-1] == 1 and g["rewards"][-1] == 1.0  # done_mode 2; an expert demo ends in success

        def small(img):  # 8x8 per channel: the scene's layout, not the renderers' details
            return F.adaptive_avg_pool2d(torch.tensor(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None], 8)

        for cam in ("agentview_image", "robot0_eye_in_hand_image"):
            theirs, mine = g["obs"][cam][0], ours["data/demo_0/obs"][cam][0]
            upright = (small(theirs) - small(mine)).abs().mean().item()
            flipped = (small(theirs[::-1]) - small(mine)).abs().mean().item()
            assert upright < 8 and flipped > 30, (cam, upright, flipped)


def test_train_and_evaluate_on_robomimic_file(robomimic_file, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "lift", "--dataset", str(robomimic_file),
                        "--max-steps", "2", "--batch-size", "8", "--output-dir", str(out), "--model.feature_dim",
                        "16", "--model.hidden_dims", "[16,16]", "--cql.num_actions", "2", "--wandb", "off",
                        "--progress", "false", "--eval-every", "2", "--eval-episodes", "1", "--eval-horizon", "3",
                        "--eval-workers", "1", "--eval-videos", "0"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval @ step 2: success 0/1" in r.stderr and "transitions" in r.stdout
    assert "evaluating with robosuite's default rendering (reflections, multisampling)" in r.stderr
    rep = json.loads((out / "eval" / "step_0000002.json").read_text())
    assert rep["records"][0]["length"] == 3 and rep["records"][0]["error"] is None
    import torch

    meta = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["visual_dr3"]
    assert meta["image_size"] == 84 and meta["env_args"]["env_kwargs"]["camera_heights"] == 84
    # evaluation renders as robomimic's file was rendered (robosuite's defaults), upright as the file is
    from visual_dr3.checkpoint import resolve_env_args
    from visual_dr3.envs.make import make_env_from_args, render_flags

    env = make_env_from_args(resolve_env_args(meta)[0])
    try:
        flags = render_flags(env)
        assert flags["reflection"] is True and flags["offsamples"] > 0 and flags["image_convention"] == "opencv"
    finally:
        env.close()


def test_a_robomimic_file_of_another_env_is_one_line(robomimic_file, tmp_path):
    from visual_dr3.app.dataset import dataset_info
    from visual_dr3.envs.tasks import get_task
    from visual_dr3.errors import UserError

    other = tmp_path / "can.hdf5"
    shutil.copy(robomimic_file, other)
    with h5py.File(other, "a") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        env_args["env_name"] = "PickPlaceCan"
        f["data"].attrs["env_args"] = json.dumps(env_args)
    assert dataset_info(robomimic_file, get_task("lift"))["image_size"] == 84
    with pytest.raises(UserError, match=r"can.hdf5: data.attrs\['env_args'\] describe robosuite env 'PickPlaceCan', "
                                        r"but task 'lift' is 'Lift'; expected --task of that env$"):
        dataset_info(other, get_task("lift"))
    assert dataset_info(other, get_task("pick_place"))["action_dim"] == 7
    with h5py.File(other, "a") as f:
        f["data"].attrs["env_args"] = "{not json"
    with pytest.raises(UserError, match=r"can.hdf5: data.attrs\['env_args'\] is not valid JSON .*; expected a JSON "
                                        r"object$"):
        dataset_info(other, get_task("lift"))
