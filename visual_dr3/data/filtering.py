"""Filtered behaviour cloning: which demos of a source to clone (``--algo.bc_filter success|topK``).

The baseline offline RL must beat on data with failures: clone only the successful demos (return > 0), or the
top K% of demos by return (undiscounted sum of rewards; the demos tied with the last one kept are kept too).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Sequence

import numpy as np

from visual_dr3.errors import UserError, say


def parse_filter(rule: str) -> Optional[tuple[str, float]]:
    """``("success", 0)`` or ``("top", K)`` with K in (0, 100]; None when ``rule`` is neither."""
    if rule == "success":
        return "success", 0.0
    m = re.fullmatch(r"top(\d+(?:\.\d+)?)", str(rule))
    if m and 0 < float(m.group(1)) <= 100:
        return "top", float(m.group(1))
    return None


def select(names: Sequence[str], returns: Sequence[float], rule: str) -> list[str]:
    """The demos of ``names`` (with their ``returns``) that ``rule`` keeps, in their order."""
    parsed = parse_filter(rule)
    if parsed is None:
        raise UserError(f"--algo.bc_filter {rule!r}: expected success or topK with K in 1..100 (e.g. top10)")
    kind, k = parsed
    r = np.asarray(returns, dtype=np.float64)
    if kind == "success":
        keep = r > 0
    else:
        n = max(1, math.ceil(len(r) * k / 100.0))
        cut = np.sort(r)[::-1][n - 1]
        keep = r >= cut
    return [name for name, kept in zip(names, keep) if kept]


def demo_returns(path: str, filter_key: Optional[str]) -> tuple[list[str], list[float]]:
    """The demos of ``path`` (those of ``mask/<filter_key>`` when given) and each one's sum of rewards."""
    import h5py

    from visual_dr3.data.validate import natural_key, open_h5, read_mask

    with open_h5(path) as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            raise UserError(f"{path}: no 'data' group; expected robomimic's layout with data/demo_<i> groups")
        names = sorted((k for k in data.keys() if isinstance(data[k], h5py.Group)), key=natural_key)
        if filter_key is not None:
            names = read_mask(path, f, filter_key, set(names))
        returns = []
        for n in names:
            if "rewards" not in data[n]:
                raise UserError(f"{path}: key 'rewards' missing in data/{n}; expected the demo's rewards")
            returns.append(float(np.sum(np.asarray(data[n]["rewards"][()], dtype=np.float64))))
    return names, returns


def filter_sources(specs: Sequence, rule: str) -> list:
    """Each source spec with ``demos`` set to the demos ``rule`` keeps; says how many; a source left with none is
    a one-line UserError."""
    out = []
    for i, spec in enumerate(specs):
        names, returns = demo_returns(spec.path, spec.filter_key)
        kept = select(names, returns, rule)
        where = spec.path + (f" mask/{spec.filter_key}" if spec.filter_key else "")
        if not kept:
            raise UserError(f"--algo.bc_filter {rule}: keeps no demo of {where} (returns {min(returns):g} to "
                            f"{max(returns):g}); expected at least one")
        say(f"[visual-dr3] filtered BC ({rule}): cloning {len(kept)} of {len(names)} demos of {where}")
        out.append(dataclasses.replace(spec, demos=tuple(kept)))
    return out
