"""Shared fixtures: small real datasets made once per test session (real robosuite envs, real HDF5)."""

import os

import pytest

import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)

# train.py picks the cpu preset on a machine without CUDA; the suite tests the base config (its tiny runs set their
# own sizes) unless a test asks for a preset itself (test_recipe_parts, test_recipe_e2e). Child processes inherit it.
os.environ.setdefault("VISUAL_DR3_PRESET", "gpu")


def _tiny_lift(tmp_path_factory, name: str, episodes: int, kind: str, seed: int = 0):
    from visual_dr3.data.generate import generate_dataset

    out = tmp_path_factory.mktemp("data") / name
    generate_dataset(task="lift", episodes=episodes, out=str(out), kind=kind, image_size=32, workers=1, seed=seed,
                     progress=False)
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
