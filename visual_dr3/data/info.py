"""A dataset's shapes and metadata without loading it (:func:`peek_dataset`), checked against a task
(:func:`dataset_info`): what ``train.py`` and ``python -m visual_dr3.data.check`` read first."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from visual_dr3.errors import UserError


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
