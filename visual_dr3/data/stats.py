"""Dataset statistics the learner needs before it builds its networks: proprio mean/std and fixed action dims.

Read from the same small arrays the loader checks (:func:`visual_dr3.data.validate.scan_file`; no image is
read), over exactly the demos the run's sources select, and saved in the checkpoint with the networks.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from visual_dr3.data.validate import scan_file


def dataset_stats(sources: Sequence, image_keys: Sequence[str], proprio_keys: Sequence[str],
                  action_dim: Optional[int] = None) -> dict:
    """``{"proprio_mean", "proprio_std", "fixed_actions", "transitions"}`` over the sources' demos.

    ``sources``: objects with ``path`` and ``filter_key`` (:class:`~visual_dr3.data.replay.SourceSpec`).
    ``proprio_mean``/``proprio_std``: per dimension over every frame (lists of floats; population std).
    ``fixed_actions``: per action dim, the value every transition holds in that dim, or None where they differ
    (e.g. ``[None, None, None, 0.0, 0.0, 0.0, None]`` for the scripted position-only data).
    """
    by_file: dict[str, list] = {}
    for s in sources:
        by_file.setdefault(os.path.realpath(s.path), []).append(s)
    proprio, actions = [], []
    image_hw, proprio_dims = None, None
    for specs in by_file.values():
        plan = scan_file(specs[0].path, [s.filter_key for s in specs], image_keys, proprio_keys, action_dim,
                         None, image_hw, proprio_dims)
        action_dim, image_hw, proprio_dims = plan.action_dim, plan.image_hw or image_hw, plan.proprio_dims
        used = sorted({j for idxs in plan.source_demos for j in idxs})
        proprio += [plan.demos[j].proprio for j in used]
        actions += [plan.demos[j].actions for j in used]
    p = np.concatenate(proprio).astype(np.float64) if proprio else np.zeros((0, 0))
    a = np.concatenate(actions).astype(np.float64)
    fixed = [float(a[0, i]) if np.all(a[:, i] == a[0, i]) else None for i in range(a.shape[1])]
    return {"proprio_mean": p.mean(0).tolist() if len(p) else [], "proprio_std": p.std(0).tolist() if len(p) else [],
            "fixed_actions": fixed, "transitions": int(a.shape[0])}
