"""Shared fixtures: small real datasets made once per test run (real robosuite envs, real HDF5).

The suite runs on ``pytest-xdist`` workers (``-n``, pyproject's addopts): a dataset is made by the first worker
that needs it, under a file lock in the run's shared temporary folder, and read by the others.
"""

import os

import pytest
from filelock import FileLock

import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)

# CPU threads of each test process and of what it starts: the cores shared among the xdist workers (OpenMP
# threads beyond the cores spin against each other and slow every process several times over)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# train.py picks the cpu preset on a machine without CUDA; the suite tests the code's defaults (preset none: no
# preset file; its tiny runs set their own sizes) unless a test asks for a preset itself (test_config,
# test_recipe_parts, test_recipe_e2e). Child processes inherit it.
os.environ.setdefault("VISUAL_DR3_PRESET", "none")


def _tiny_lift(tmp_path_factory, name: str, episodes: int, kind: str, seed: int = 0):
    from visual_dr3.data.generate import generate_dataset

    # the folder every xdist worker of this run shares (without xdist: the session's own)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / "shared-data" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.is_file():  # generate_dataset writes a temp file and renames it: a file here is complete
            generate_dataset(task="lift", episodes=episodes, out=str(out), kind=kind, image_size=32, workers=1,
                             seed=seed, progress=False)
    return out


@pytest.fixture(scope="session")
def lift_dataset(tmp_path_factory):
    """A real 3-episode lift dataset, 32x32 images, mixed noise (successes and failures), made once."""
    # data seed 2: with scripted policy version 3, seed 0's three mixed episodes all succeed; seed 2's third
    # (sigma 1.2) fails, 45/90/120 steps
    return _tiny_lift(tmp_path_factory, "lift_tiny.hdf5", 3, "mixed", seed=2)


@pytest.fixture(scope="session")
def lift_expert_dataset(tmp_path_factory):
    """A real 4-episode lift dataset, 32x32 images, expert (low-noise) scripted demos, made once."""
    return _tiny_lift(tmp_path_factory, "lift_expert_tiny.hdf5", 4, "expert")
