"""Shared fixtures: small real datasets made once per test session (real robosuite envs, real HDF5)."""

import pytest

import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)


@pytest.fixture(scope="session")
def lift_dataset(tmp_path_factory):
    """A real 3-episode lift dataset, 32x32 images, mixed noise (successes and failures), made once."""
    from visual_dr3.data.generate import generate_dataset

    out = tmp_path_factory.mktemp("data") / "lift_tiny.hdf5"
    generate_dataset(task="lift", episodes=3, out=str(out), kind="mixed", image_size=32, workers=1, seed=0,
                     progress=False)
    return out
