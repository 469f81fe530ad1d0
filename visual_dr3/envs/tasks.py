"""Task registry: which robosuite environment, horizon, cameras and proprio keys each task uses.

Kept free of robosuite/mujoco imports so that it is cheap to import (CLIs validate ``--task`` with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visual_dr3.errors import UserError

DEFAULT_CAMERAS: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
DEFAULT_PROPRIO_KEYS: tuple[str, ...] = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
#: the observation key under which the concatenated proprio vector travels (batches, networks, rollouts)
PROPRIO_KEY = "proprio"

#: Dataset kinds the generator knows (see ``visual_dr3.data.generate``).
KINDS: tuple[str, ...] = ("expert", "mixed", "cog", "stitch")


@dataclass(frozen=True)
class TaskSpec:
    """One task: a robosuite environment plus what we observe and how long an episode may last.

    ``horizon`` is the episode limit used for data generation and evaluation; it leaves a margin over
    the longest episode the scripted policy needs without noise (lift ~50 steps, pick_place ~140-190,
    stack ~110-130).
    """

    name: str
    env_name: str
    horizon: int
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    proprio_keys: tuple[str, ...] = DEFAULT_PROPRIO_KEYS
    action_dim: int = 7
    default_kind: str = "mixed"
    default_episodes: int = 100
    #: name of the scripted policy in :mod:`visual_dr3.envs.scripted` (see ``scripted.POLICIES``)
    scripted_policy: str = ""
    #: position-noise levels the ``mixed`` kind cycles over (episode i uses level i % len), tuned so
    #: that roughly half of the episodes succeed
    mixed_sigmas: tuple[float, ...] = (0.1, 0.3, 0.6, 1.0)

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(image_key(c) for c in self.cameras)


TASKS: dict[str, TaskSpec] = {
    "lift": TaskSpec(
        name="lift", env_name="Lift", horizon=120, default_episodes=200, scripted_policy="lift",
        mixed_sigmas=(0.1, 0.6, 1.2, 2.0),
    ),
    "pick_place": TaskSpec(
        name="pick_place", env_name="PickPlaceCan", horizon=300, default_episodes=100,
        scripted_policy="pick_place", mixed_sigmas=(0.1, 0.4, 0.8, 1.2),
    ),
    "stack": TaskSpec(
        name="stack", env_name="Stack", horizon=200, default_episodes=100, scripted_policy="stack",
        mixed_sigmas=(0.1, 0.3, 0.6, 1.0),
    ),
}


def get_task(name: "str | TaskSpec") -> TaskSpec:
    """The :class:`TaskSpec` called ``name`` (a TaskSpec is returned as is); UserError if unknown."""
    if isinstance(name, TaskSpec):
        return name
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None


def image_key(camera: str) -> str:
    """Observation key of a camera's RGB image, robosuite's naming: ``agentview`` -> ``agentview_image``."""
    return f"{camera}_image"


def default_dataset_path(task: "str | TaskSpec", kind: str | None = None, episodes: int | None = None,
                         image_size: int = 84) -> Path:
    """Where the task's default dataset lives, relative to the working directory: ``data/<task>_<kind>.hdf5``
    for the task's default episodes at 84 px, ``data/<task>_<kind>_<size>px_<episodes>ep.hdf5`` otherwise (the
    name the study scripts give the same dataset)."""
    spec = get_task(task)
    name = f"{spec.name}_{kind or spec.default_kind}"
    if (episodes is not None and episodes != spec.default_episodes) or image_size != 84:
        name += f"_{image_size}px_{episodes or spec.default_episodes}ep"
    return Path("data") / f"{name}.hdf5"
