"""Filtered behaviour cloning (``--algo.bc_filter``): which demos are kept, exactly, and that the loader then
holds only their transitions (a real HDF5 file with chosen returns)."""

import h5py
import numpy as np
import pytest

from visual_dr3.app.cli_args import parse_train_args
from visual_dr3.data.filtering import demo_returns, filter_sources, parse_filter, select
from visual_dr3.data.hdf5_writer import DatasetWriter
from visual_dr3.data.loading import SourceSpec, load_replay
from visual_dr3.errors import UserError

NAMES = ["demo_0", "demo_1", "demo_2", "demo_3", "demo_4"]
RETURNS = [0.0, 1.0, 3.0, 1.0, 0.0]


def test_parse_filter():
    assert parse_filter("success") == ("success", 0.0)
    assert parse_filter("top10") == ("top", 10.0) and parse_filter("top100") == ("top", 100.0)
    for bad in ("top0", "top101", "best", "top", "10"):
        assert parse_filter(bad) is None


def test_select_success_and_top_k_with_ties():
    assert select(NAMES, RETURNS, "success") == ["demo_1", "demo_2", "demo_3"]
    assert select(NAMES, RETURNS, "top20") == ["demo_2"]  # ceil(5 * 0.2) = 1 demo: the best
    assert select(NAMES, RETURNS, "top40") == ["demo_1", "demo_2", "demo_3"]  # 2 demos, the tie at 1.0 kept
    assert select(NAMES, RETURNS, "top1") == ["demo_2"]  # at least one
    assert select(NAMES, RETURNS, "top100") == NAMES
    with pytest.raises(UserError, match="--algo.bc_filter 'best': expected success or topK"):
        select(NAMES, RETURNS, "best")


def _file(path, returns):
    with DatasetWriter(path, {"env_name": "Lift", "type": 1, "env_kwargs": {}}, {"task": "lift"}) as w:
        for i, r in enumerate(returns):
            T = 2 + i
            rew = np.zeros(T, np.float32)
            rew[-1] = r
            w.add_demo(np.full((T, 7), i / 10, np.float32), rew, (rew > 0).astype(np.int64), np.zeros((T, 4)),
                       {"agentview_image": np.full((T, 8, 8, 3), i, np.uint8),
                        "robot0_eef_pos": np.zeros((T, 3))})
        w.set_mask("train", NAMES[:4])
    return path


def test_loader_holds_only_the_kept_demos(tmp_path, capsys):
    path = str(_file(tmp_path / "d.hdf5", RETURNS))
    assert demo_returns(path, None) == (NAMES, RETURNS)
    assert demo_returns(path, "train") == (NAMES[:4], RETURNS[:4])
    [spec] = filter_sources([SourceSpec(path)], "success")
    assert spec.demos == ("demo_1", "demo_2", "demo_3")
    assert "cloning 3 of 5 demos of" in capsys.readouterr().err
    rb = load_replay([spec], ["agentview_image"], ["robot0_eef_pos"], progress=False)
    # demos 1, 2, 3 have 3, 4, 5 steps; each one's actions are i / 10
    acts = rb.action.cpu().numpy()[:, 0]
    assert np.unique(np.round(acts * 10).astype(int)).tolist() == [1, 2, 3]
    assert len(acts) == 3 + 4 + 5
    [spec] = filter_sources([SourceSpec(path, filter_key="train")], "top25")  # ceil(4 / 4) = 1: demo_2
    assert spec.demos == ("demo_2",)
    with pytest.raises(UserError, match=r"keeps no demo of .*z.hdf5 mask/train \(returns 0 to 0\)"):
        filter_sources([SourceSpec(str(_file(tmp_path / "z.hdf5", [0.0] * 5)), filter_key="train")], "success")


def test_config_rules():
    assert parse_train_args(["--algorithm", "bc", "--algo.bc_filter", "top10"]).algo.bc_filter == "top10"
    with pytest.raises(UserError, match="algo.bc_filter.*null unless --algorithm bc"):
        parse_train_args(["--algo.bc_filter", "success"])
    with pytest.raises(UserError, match="algo.bc_filter.*success or topK"):
        parse_train_args(["--algorithm", "bc", "--algo.bc_filter", "best"])
