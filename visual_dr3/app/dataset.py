"""The dataset a training run reads: the one named by ``--dataset``, or the task's default, generated on first
use (:func:`resolve_dataset`); its shapes and metadata without loading it (:func:`peek_dataset`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from visual_dr3.data.info import dataset_info, peek_dataset  # noqa: F401  (re-exported: train.py, benchmarks)
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
