"""Build robosuite environments the same way for data generation and evaluation.

One construction path (:func:`make_env` / :func:`make_env_from_args`) so that a policy is evaluated on
exactly the images it was trained on:

- headless EGL rendering (``visual_dr3/__init__`` sets ``MUJOCO_GL`` before mujoco is imported);
- ``hard_reset=False`` (reset ~50 ms instead of ~1.6 s);
- reflections off (scene flag ``mjRND_REFLECTION``) and offscreen multisampling off
  (``model.vis.quality.offsamples = 0`` plus re-created offscreen buffers): a frame takes ~13 ms
  instead of ~55 ms on a CPU (llvmpipe); re-applied automatically if the env ever hard-resets;
- upright images: robosuite's ``macros.IMAGE_CONVENTION = "opencv"`` (row 0 is the top of the image),
  set for the whole process when the first env is described or built (:func:`robosuite_module`);
- sparse reward (``reward_shaping=False``), 20 Hz control, the BASIC composite controller (OSC_POSE arm).

Seeding: robosuite 1.5.2 draws object placements and the robot's initial joint noise from ``env.rng``
(a ``numpy.random.Generator`` that the placement sampler holds a reference to). :func:`reset_env`
re-seeds that generator *in place* before a reset, so an episode's initial state depends only on its
seed, not on what the env did before.

Importing this module does nothing to the process: robosuite (and its log filter, the triton preload and
the image convention) is set up on first use, by :func:`robosuite_module`.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from typing import Any

import numpy as np

import visual_dr3  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)
from visual_dr3.envs.tasks import TaskSpec, get_task
from visual_dr3.errors import UserError


class _QuietRobosuite(logging.Filter):
    """Drop robosuite's INFO chatter and its import-time warnings about optional extras."""

    _NOISE = ("robosuite_models", "mink-based", "private macro file", "setup_macros.py")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        msg = record.getMessage()
        return not any(n in msg for n in self._NOISE)


def _preload_triton() -> None:
    """Load triton's native library before any EGL context exists.

    Measured here: once an EGL context has been made (Mesa llvmpipe loads its LLVM), importing triton
    (which ``import torchvision`` does, through torch._dynamo) segfaults the process; loaded first, both
    work. Loading ``libtriton.so`` (RTLD_LOCAL) takes ~0.15 s; nothing happens if triton is absent.
    """
    try:
        import ctypes
        import importlib.util

        spec = importlib.util.find_spec("triton")
        if spec is None or not spec.origin:
            return
        lib = os.path.join(os.path.dirname(spec.origin), "_C", "libtriton.so")
        if os.path.exists(lib):
            ctypes.CDLL(lib, mode=os.RTLD_LAZY | os.RTLD_LOCAL)
    except Exception:  # best effort: never stop env construction over this
        pass


IMAGE_CONVENTION = "opencv"


@functools.cache
def robosuite_module():
    """``robosuite``, imported the way every env of this project needs it, once per process: robosuite's
    INFO chatter filtered (before its import, which logs), triton's library loaded before any EGL context
    (:func:`_preload_triton`), images upright (``macros.IMAGE_CONVENTION = "opencv"``, process-wide)."""
    logging.getLogger("robosuite_logs").addFilter(_QuietRobosuite())
    _preload_triton()
    import robosuite
    import robosuite.macros

    robosuite.macros.IMAGE_CONVENTION = IMAGE_CONVENTION
    return robosuite

ROBOT = "Panda"
CONTROL_FREQ = 20
ENV_TYPE_ROBOSUITE = 1  # robomimic's EnvType.ROBOSUITE_TYPE


def render_settings() -> dict:
    """What we change about robosuite's rendering; stored in datasets and checkpoints."""
    return {
        "renderer": os.environ.get("MUJOCO_GL", ""),
        "reflection": False,
        "offsamples": 0,
        "image_convention": IMAGE_CONVENTION,
        "hard_reset": False,
    }


def controller_config() -> dict:
    """robosuite 1.5's BASIC composite controller for the Panda (arm: OSC_POSE, delta actions).

    Only the ``right`` part (the Panda's one arm and gripper) is kept: the config's other parts (left,
    torso, head, base, legs) make robosuite warn five times at every reset.
    """
    robosuite_module()
    from robosuite.controllers import load_composite_controller_config

    cfg = load_composite_controller_config(controller="BASIC", robot=ROBOT)
    cfg["body_parts"] = {"right": cfg["body_parts"]["right"]}
    return cfg


def env_args_for(task: "str | TaskSpec", image_size: int = 84, cameras=None, horizon: int | None = None,
                 seed: int | None = None) -> dict:
    """robomimic's ``env_args`` (``data.attrs['env_args']``): everything ``suite.make`` needs to rebuild the env.

    ``seed`` (optional) goes into ``env_kwargs``: robosuite draws some model properties when it builds
    the model (Lift's cube size is uniform in 2.0-2.2 cm) from ``env.rng``, so the seed fixes them.
    """
    spec = get_task(task)
    cams = list(spec.cameras if cameras is None else cameras)
    size = _check_size(image_size)
    args = {
        "env_name": spec.env_name,
        "env_version": robosuite_module().__version__,
        "type": ENV_TYPE_ROBOSUITE,
        "env_kwargs": {
            "robots": [ROBOT],
            "controller_configs": controller_config(),
            "has_renderer": False,
            "has_offscreen_renderer": True,
            "ignore_done": False,
            "use_object_obs": True,
            "use_camera_obs": True,
            "camera_names": cams,
            "camera_heights": size,
            "camera_widths": size,
            "camera_depths": False,
            "horizon": int(horizon or spec.horizon),
            "control_freq": CONTROL_FREQ,
            "reward_shaping": False,
            "hard_reset": False,
        },
    }
    if seed is not None:
        args["env_kwargs"]["seed"] = int(seed)
    return args


def make_env(task: "str | TaskSpec", image_size: int = 84, cameras=None, horizon: int | None = None,
             seed: int | None = None, *, fast_render: bool = True):
    """A robosuite env for ``task`` with our render settings (see the module docstring).

    ``seed`` seeds robosuite's ``env.rng`` at construction (model properties such as Lift's cube size,
    then the placements of successive resets); :func:`reset_env` re-seeds single episodes.

    Observations include ``{camera}_image`` (uint8 (H, W, 3), upright) for each camera and the task's
    proprio keys. ``fast_render=False`` keeps robosuite's default reflections/multisampling (only for
    benchmarks: data and evaluation must use the default ``True``).
    """
    return make_env_from_args(env_args_for(task, image_size, cameras, horizon, seed), fast_render=fast_render)


#: key of ``env_args`` (beside robomimic's ``env_name``/``env_kwargs``) saying how to render: False for a dataset
#: made with robosuite's default rendering (reflections, multisampling), e.g. by robomimic's conversion scripts
FAST_RENDER_KEY = "visual_dr3_fast_render"


def make_env_from_args(env_args: dict, seed: int | None = None, *, fast_render: bool | None = None, **overrides):
    """Rebuild the env described by robomimic ``env_args`` (from a dataset or checkpoint).

    ``overrides`` replace entries of ``env_kwargs`` (e.g. ``horizon=500``). ``hard_reset`` is always False.
    ``fast_render`` None: ``env_args[FAST_RENDER_KEY]`` when present, else True (this project's rendering).
    """
    if not isinstance(env_args, dict) or "env_name" not in env_args:
        raise UserError(f"env_args: expected a dict with env_name/env_kwargs; got {str(env_args)[:80]!r}")
    if int(env_args.get("type", ENV_TYPE_ROBOSUITE)) != ENV_TYPE_ROBOSUITE:
        raise UserError(f"env_args: type {env_args.get('type')!r} is not robosuite; expected 1")
    kwargs: dict[str, Any] = copy.deepcopy(env_args.get("env_kwargs", {}))
    kwargs.update(overrides)
    kwargs["hard_reset"] = False
    kwargs["has_renderer"] = False
    kwargs.setdefault("has_offscreen_renderer", True)
    ctrl = kwargs.get("controller_configs")
    if isinstance(ctrl, dict) and "body_parts" not in ctrl and "type" in ctrl:
        # an old-style (robosuite <1.5) part config, as in older robomimic datasets
        from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config

        kwargs["controller_configs"] = refactor_composite_controller_config(ctrl, ROBOT, ["right"])
    if seed is not None:
        kwargs["seed"] = int(seed)
    robosuite = robosuite_module()
    robosuite.macros.IMAGE_CONVENTION = IMAGE_CONVENTION  # in case anything changed it since the first use
    env = robosuite.make(env_args["env_name"], **kwargs)
    env._vdr3_fast_render = bool(env_args.get(FAST_RENDER_KEY, True) if fast_render is None else fast_render)
    _apply_render_settings(env)
    # The MJCF of this env, for `model_file` in datasets. mj_saveLastXML saves the model mujoco compiled
    # last in this process, so take it now, right after construction.
    env._vdr3_model_xml = env.sim.model.get_xml()
    _wrap_reset(env)
    return env


def reset_env(env, seed: int | None = None) -> dict:
    """Reset ``env``; with a ``seed`` the initial state (object placement, robot joint noise) depends
    only on that seed. Returns the first observation."""
    if seed is not None:
        env.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
    return env.reset()


def model_xml(env) -> str:
    """The env's MJCF XML (robomimic's per-demo ``model_file``)."""
    xml = getattr(env, "_vdr3_model_xml", None)
    return xml if xml is not None else env.sim.model.get_xml()


def sim_state(env) -> np.ndarray:
    """The flattened sim state robomimic stores in ``states``: (time, qpos, qvel)."""
    return np.asarray(env.sim.get_state().flatten(), dtype=np.float64)


def render_flags(env) -> dict:
    """The render settings actually in effect on ``env`` (for tests and sanity checks)."""
    import mujoco

    ctx = env.sim._render_context_offscreen
    return {
        "reflection": bool(ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION]) if ctx is not None else None,
        "offsamples": int(env.sim.model.vis.quality.offsamples),
        "image_convention": robosuite_module().macros.IMAGE_CONVENTION,
    }


def _check_size(image_size) -> int:
    try:
        size = int(image_size)
    except (TypeError, ValueError):
        size = 0
    if size < 8 or size != image_size:
        raise UserError(f"--image-size: got {image_size!r}; expected an integer >= 8")
    return size


def _apply_render_settings(env) -> None:
    import mujoco

    env._vdr3_sim = env.sim
    if not getattr(env, "_vdr3_fast_render", True):
        return
    # on the model even without a render context, so that the saved MJCF (model_file) is the same
    env.sim.model.vis.quality.offsamples = 0
    ctx = env.sim._render_context_offscreen
    if ctx is None:
        return
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    if ctx.con.offSamples != 0:
        # the offscreen framebuffer's sample count is fixed when the context's buffers are made
        ctx.gl_ctx.make_current()
        ctx.con.free()
        del ctx.con
        ctx._set_mujoco_context_and_buffers()


def _wrap_reset(env) -> None:
    """Make ``env.reset()`` re-apply the render settings when robosuite rebuilt the sim (hard reset)."""
    original = env.reset

    def reset():
        obs = original()
        if env.sim is not env._vdr3_sim or (
            env._vdr3_fast_render and env.sim.model.vis.quality.offsamples != 0
        ):
            _apply_render_settings(env)
            env._vdr3_model_xml = env.sim.model.get_xml()
            obs = env._get_observations(force_update=True)
        return obs

    env.reset = reset
