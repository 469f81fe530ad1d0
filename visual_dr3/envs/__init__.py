"""Tasks, environment construction and scripted policies.

``tasks`` is light (no robosuite import); ``make_env`` and friends are loaded on first use, since
importing robosuite/mujoco takes a couple of seconds.
"""

from visual_dr3.envs.tasks import TASKS, TaskSpec, default_dataset_path, get_task, image_key

_LAZY = {
    "make_env": "visual_dr3.envs.make",
    "make_env_from_args": "visual_dr3.envs.make",
    "env_args_for": "visual_dr3.envs.make",
    "render_settings": "visual_dr3.envs.make",
    "reset_env": "visual_dr3.envs.make",
    "make_policy": "visual_dr3.envs.scripted",
}

__all__ = ["TASKS", "TaskSpec", "default_dataset_path", "get_task", "image_key", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'visual_dr3.envs' has no attribute {name!r}")
