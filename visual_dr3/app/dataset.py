"""The dataset a training run reads: the one named by ``--dataset``, or the task's default, generated on first
use (:func:`resolve_dataset`); its shapes and metadata without loading it (:func:`peek_dataset`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from visual_dr3.errors import UserError, say
from visual_dr3.learner.config import TrainConfig

#: environment variable naming the folder that holds the generated default datasets' ``data/`` (default: the
#: current working directory, never the installed package), e.g. a scratch disk on a cluster, or an empty folder
#: to time a run from nothing
DATA_ROOT_ENV = "VISUAL_DR3_DATA_ROOT"


def data_root() -> Path:
    """The folder whose ``data/`` holds the default datasets: ``$VISUAL_DR3_DATA_ROOT``, else the current
    working directory (as for the run folder, ``runs/<task>``)."""
    return Path(os.environ.get(DATA_ROOT_ENV) or Path.cwd())


def rank(local: bool = False) -> int:
    """This process's DDP rank (global, or on this node) from the launcher's environment; 0 if none."""
    names = ("LOCAL_RANK", "SLURM_LOCALID") if local else ("RANK", "SLURM_PROCID", "LOCAL_RANK")
    for var in names:
        if var in os.environ:
            return int(os.environ[var])
    return 0


def peek_dataset(path: Path, image_keys: Sequence[str], proprio_keys: Sequence[str]) -> dict:
    """Shapes and metadata of a dataset without loading it (full validation happens in load_replay)."""
    import h5py

    from visual_dr3.data.validate import parse_json_attr

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise UserError(f"{path}: no 'data' group; expected a robomimic-layout HDF5 file")
            data = f["data"]
            demos = sorted(k for k in data.keys() if k.startswith("demo_"))
            if not demos:
                raise UserError(f"{path}: 'data' holds no demo_* groups")
            obs = data[demos[0]].get("obs")
            if obs is None:
                raise UserError(f"{path}: data/{demos[0]} has no 'obs' group")
            for k in list(image_keys) + list(proprio_keys):
                if k not in obs:
                    raise UserError(f"{path}: obs key '{k}' missing in data/{demos[0]}/obs "
                                    f"(have: {', '.join(sorted(obs.keys()))})")
            shape = tuple(obs[image_keys[0]].shape)
            if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
                raise UserError(f"{path}: data/{demos[0]}/obs/{image_keys[0]} has shape {shape}; expected square "
                                f"uint8 images (T, H, H, 3), e.g. robomimic's 84x84")
            image_size = int(shape[1])
            proprio_dim = int(sum(int(obs[k].shape[1]) if obs[k].ndim > 1 else 1 for k in proprio_keys))
            env_args = parse_json_attr(str(path), data, "env_args")  # JSON only ({} when absent; bad JSON: one line)
            meta = parse_json_attr(str(path), data, "visual_dr3")
            action_dim = int(data[demos[0]]["actions"].shape[1])
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path}: cannot be read as HDF5, truncated or corrupt ({first}); expected a complete "
                        f"robomimic-layout file") from None
    return dict(image_size=image_size, proprio_dim=proprio_dim, env_args=env_args, meta=meta,
                action_dim=action_dim)


def dataset_info(path: Path, task) -> dict:
    """:func:`peek_dataset` for ``task``'s keys, checked against the task (action dimension, task name)."""
    info = peek_dataset(path, list(task.image_keys), list(task.proprio_keys))
    if info["action_dim"] != task.action_dim:
        raise UserError(f"{path}: actions have dimension {info['action_dim']}; task '{task.name}' "
                        f"expects {task.action_dim}")
    if info["meta"].get("task") not in (None, task.name):
        raise UserError(f"{path}: made for task '{info['meta']['task']}', not '{task.name}' (--task)")
    env_name = info["env_args"].get("env_name") if isinstance(info["env_args"], dict) else None
    if env_name not in (None, task.env_name):  # a file of robomimic's tooling names its env only here
        raise UserError(f"{path}: data.attrs['env_args'] describe robosuite env '{env_name}', but task "
                        f"'{task.name}' is '{task.env_name}'; expected --task of that env")
    return info


def resolve_dataset(cfg: TrainConfig, task) -> Path:
    """The run's main dataset; the task default is generated when missing or made by an older version of
    the scripted policies.

    The first process of each node generates it (atomic write: on a shared file system two nodes write the
    same contents and the last rename wins); the node's other processes wait for the file.
    """
    if cfg.dataset is not None:
        path = Path(cfg.dataset)
        if not path.is_file():
            raise UserError(f"--dataset {path}: file not found")
        return path
    from visual_dr3.data.generate import made_by_older_script
    from visual_dr3.envs.tasks import default_dataset_path

    kind = cfg.data.kind or task.default_kind
    episodes = cfg.data.episodes or task.default_episodes
    path = data_root() / default_dataset_path(task.name, kind, episodes, cfg.data.image_size)
    stale = path.is_file() and made_by_older_script(path)
    if path.is_file() and not stale:
        return path
    if rank(local=True) != 0:
        deadline = time.time() + 6 * 3600
        while not path.is_file() or made_by_older_script(path):
            if time.time() > deadline:
                raise UserError(f"{path}: waited for rank 0 to generate the dataset; it never appeared")
            time.sleep(5)
        return path
    from visual_dr3.data.generate import generate_dataset

    why = "was made by an older scripted policy" if stale else "is missing"
    say(f"[visual-dr3] {path} {why}: generating the default '{task.name}' dataset "
        f"({episodes} episodes, kind {kind}, {cfg.data.image_size} px) first.", stdout=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # data seed 0 whatever the run's seed: the file's name does not hold a seed, and every run seed that finds
    # it must train on the same data
    generate_dataset(task=task.name, episodes=episodes, out=str(path), kind=kind, image_size=cfg.data.image_size,
                     seed=0, workers=max(1, (os.cpu_count() or 1)))
    return path
