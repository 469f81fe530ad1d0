"""Resident replay: loading robomimic-layout files, s'/a' at demo boundaries, mixing, validation errors."""

from __future__ import annotations

import os
from collections import Counter

import h5py
import numpy as np
import pytest
import torch

from h5fixtures import CAMERAS, ENV_ARGS, PROPRIO, PROPRIO_DIM, decode_images, write_file
from visual_dr3.data.replay import Batch, ResidentReplay, SourceSpec, load_replay, split_counts
from visual_dr3.errors import UserError

CAMS = list(CAMERAS)
PROP = list(PROPRIO)


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def load(sources, **kw) -> ResidentReplay:
    kw.setdefault("image_keys", CAMS)
    kw.setdefault("proprio_keys", PROP)
    return load_replay(sources, **kw)


def decode(batch: Batch, which: str = "obs"):
    """Per camera (B, 3) codes (demo, t, 16*cam+file) for obs or next_obs, checking proprio agrees."""
    d = getattr(batch, which)
    codes = [decode_images(d[k].numpy()) for k in CAMS]
    for c, code in enumerate(codes):
        assert (code[:, 0] == codes[0][:, 0]).all() and (code[:, 1] == codes[0][:, 1]).all()
        assert (code[:, 2] == 16 * c + codes[0][:, 2] % 16).all()
    p = d["proprio"].numpy()
    file_id, demo, t = codes[0][:, 2] % 16, codes[0][:, 0], codes[0][:, 1]
    np.testing.assert_array_equal(p[:, 0], file_id)
    np.testing.assert_array_equal(p[:, 1], demo)
    np.testing.assert_array_equal(p[:, 2], t)
    np.testing.assert_array_equal(p[:, 3], t + 0.5)
    np.testing.assert_array_equal(p[:, 4], -t)
    return file_id, demo, t


# ---------------------------------------------------------------------- shapes, dtypes, metadata
def test_sample_shapes_dtypes_device(tmp_path):
    path = write_file(tmp_path / "a.hdf5", ours=True)
    rb = load(str(path), action_dim=7, expect_image_size=8)
    b = rb.sample(32, gen())
    assert set(b.obs) == set(CAMS) | {"proprio"} and set(b.next_obs) == set(b.obs)
    for d in (b.obs, b.next_obs):
        for k in CAMS:
            assert d[k].shape == (32, 3, 8, 8) and d[k].dtype == torch.uint8 and d[k].device.type == "cpu"
            assert d[k].is_contiguous()
        assert d["proprio"].shape == (32, PROPRIO_DIM) and d["proprio"].dtype == torch.float32
    assert b.action.shape == (32, 7) and b.action.dtype == torch.float32
    assert b.next_action.shape == (32, 7) and b.next_action.dtype == torch.float32
    assert b.reward.shape == (32,) and b.reward.dtype == torch.float32
    assert b.done.shape == (32,) and b.done.dtype == torch.float32
    assert b.source.shape == (32,) and b.source.dtype == torch.int64
    # Metadata
    assert rb.image_keys == CAMS and rb.proprio_keys == PROP and rb.proprio_dim == PROPRIO_DIM
    assert rb.action_dim == 7 and rb.image_size == (8, 8)
    assert rb.env_args == ENV_ARGS and rb.meta["task"] == "lift"
    assert rb.num_transitions == 12 and rb.source_sizes == [12] and rb.weights == [1.0]
    assert rb.num_frames == 12 + 3  # T frames per demo + 1 next_obs frame each
    frames = rb.num_frames * 3 * 8 * 8 * len(CAMS)
    assert frames < rb.nbytes < frames + 4096
    assert "12 transitions" in rb.describe()


def test_robomimic_file_without_meta_and_images_stored_once(tmp_path):
    path = write_file(tmp_path / "rm.hdf5", next_obs=False, ours=False)
    rb = load(path)
    assert rb.meta == {} and rb.env_args == ENV_ARGS
    for k in CAMS:
        assert rb.frames[k].shape == (12, 3, 8, 8)  # no extra frames without next_obs
        assert rb.frames[k].is_contiguous() and rb.frames[k].dtype == torch.uint8


def test_no_env_args_gives_empty_dict(tmp_path):
    path = write_file(tmp_path / "a.hdf5", env_args=None)
    assert load(path).env_args == {}


# ---------------------------------------------------------------------- s', a', r, done at demo boundaries
LENGTHS = (5, 3, 4, 1)
SUCCESS = (True, False, True, False)


def _all_transitions(rb: ResidentReplay, n: int = 4000, seed: int = 0) -> Batch:
    return rb.sample(n, gen(seed))


@pytest.mark.parametrize("ours", [True, False])
def test_next_obs_exact_with_next_obs_in_file(tmp_path, ours):
    path = write_file(tmp_path / "a.hdf5", LENGTHS, SUCCESS, next_obs=True, ours=ours)
    rb = load(path)
    assert rb.num_transitions == sum(LENGTHS)
    b = _all_transitions(rb)
    f, demo, t = decode(b, "obs")
    nf, ndemo, nt = decode(b, "next_obs")
    np.testing.assert_array_equal(ndemo, demo)
    np.testing.assert_array_equal(nf, f)
    np.testing.assert_array_equal(nt, t + 1)  # also the last step: next_obs[T-1] is frame T
    T = np.array(LENGTHS)[demo]
    last = t == T - 1
    a, na = b.action.numpy(), b.next_action.numpy()
    np.testing.assert_array_equal(a[:, 0], demo)
    np.testing.assert_array_equal(a[:, 1], t)
    np.testing.assert_array_equal(na[:, 0], demo)
    np.testing.assert_array_equal(na[:, 1], np.where(last, t, t + 1))  # a_{t+1}; a_t at the last step
    np.testing.assert_array_equal(na[:, 2:], a[:, 2:])
    np.testing.assert_array_equal(b.reward.numpy(), np.float32(1000 * demo + t + 0.25))
    done = np.where(last, np.array(SUCCESS)[demo], False).astype(np.float32)
    np.testing.assert_array_equal(b.done.numpy(), done)
    # Every transition, the truncated last steps and the 1-step demo included, is sampled.
    assert set(zip(demo.tolist(), t.tolist())) == {(d, s) for d, T in enumerate(LENGTHS) for s in range(T)}


@pytest.mark.parametrize("ours", [True, False])
def test_next_obs_without_next_obs_in_file(tmp_path, ours):
    path = write_file(tmp_path / "a.hdf5", LENGTHS, SUCCESS, next_obs=False, ours=ours)
    rb = load(path)
    # Truncated last steps (done=0, no next_obs) are excluded: demos 1 and 3 lose their last step.
    expected = {(d, s) for d, T in enumerate(LENGTHS) for s in range(T) if SUCCESS[d] or s < T - 1}
    assert rb.num_transitions == len(expected) == sum(LENGTHS) - 2
    b = _all_transitions(rb)
    _, demo, t = decode(b, "obs")
    _, ndemo, nt = decode(b, "next_obs")
    assert set(zip(demo.tolist(), t.tolist())) == expected
    T = np.array(LENGTHS)[demo]
    last = t == T - 1
    assert (np.array(SUCCESS)[demo][last]).all()  # only terminal last steps are sampled
    np.testing.assert_array_equal(ndemo, demo)
    np.testing.assert_array_equal(nt, np.where(last, t, t + 1))  # s' = s on a terminal last step
    np.testing.assert_array_equal(b.done.numpy(), last.astype(np.float32))
    np.testing.assert_array_equal(b.next_action.numpy()[:, 1], np.where(last, t, t + 1))
    np.testing.assert_array_equal(b.reward.numpy(), np.float32(1000 * demo + t + 0.25))


def test_source_without_sampleable_transitions_is_an_error(tmp_path):
    path = write_file(tmp_path / "a.hdf5", (1, 1), (False, False), next_obs=False)
    with pytest.raises(UserError, match=r"a\.hdf5.*no sampleable transitions"):
        load(path)


def test_uniform_within_source(tmp_path):
    path = write_file(tmp_path / "a.hdf5", (5, 3, 4))
    rb = load(path)
    b = rb.sample(24000, gen(3))
    _, demo, t = decode(b)
    counts = Counter(zip(demo.tolist(), t.tolist()))
    assert len(counts) == 12
    assert min(counts.values()) > 1700 and max(counts.values()) < 2300  # expected 2000 each


# ---------------------------------------------------------------------- determinism
def test_same_seed_same_batch_different_seed_differs(tmp_path):
    path = write_file(tmp_path / "a.hdf5", (6, 7, 5))
    rb = load(path)
    b1, b2, b3 = rb.sample(64, gen(7)), rb.sample(64, gen(7)), rb.sample(64, gen(8))
    for k in b1.obs:
        assert torch.equal(b1.obs[k], b2.obs[k]) and torch.equal(b1.next_obs[k], b2.next_obs[k])
    assert torch.equal(b1.action, b2.action) and torch.equal(b1.reward, b2.reward)
    assert not torch.equal(b1.action, b3.action)
    g = gen(7)
    c1, c2 = rb.sample(64, g), rb.sample(64, g)  # a generator advances between batches
    assert torch.equal(c1.action, b1.action) and not torch.equal(c2.action, c1.action)


# ---------------------------------------------------------------------- mixing, filter keys, several files
def test_split_counts():
    assert split_counts(256, [0.5, 0.5]) == [128, 128]
    assert split_counts(256, [1, 1, 1]) == [86, 85, 85]
    assert split_counts(10, [0.7, 0.2, 0.1]) == [7, 2, 1]
    assert split_counts(5, [1, 0, 1]) == [3, 0, 2]
    assert split_counts(7, [3, 1]) == [5, 2]  # 5.25 / 1.75: the larger remainder gets the extra sample
    assert sum(split_counts(257, [0.1, 0.2, 0.3, 0.4])) == 257


def test_mixing_two_files_exact_counts(tmp_path):
    big = write_file(tmp_path / "prior.hdf5", (20, 20, 20, 20), file_id=1)
    small = write_file(tmp_path / "task.hdf5", (3, 2), file_id=2, next_obs=False, successes=(True, True))
    rb = load([SourceSpec(str(big), weight=0.5), SourceSpec(str(small), weight=0.5)])
    assert rb.source_sizes == [80, 5] and rb.num_transitions == 85 and rb.files == [str(big), str(small)]
    for seed in range(5):
        b = rb.sample(256, gen(seed))
        f, _, _ = decode(b)
        src = b.source.numpy()
        assert (src == 0).sum() == 128 and (src == 1).sum() == 128
        np.testing.assert_array_equal(f, np.where(src == 0, 1, 2))  # each sample from its source's file
        assert (b.action.numpy()[:, 2] == f).all()
    b = rb.sample(7, gen(0))
    assert b.source.tolist() == [0, 0, 0, 0, 1, 1, 1]  # 3.5/3.5: the tie goes to the first source


def test_three_sources_weights_and_zero_weight(tmp_path):
    a = write_file(tmp_path / "a.hdf5", (4,), file_id=1)
    b_ = write_file(tmp_path / "b.hdf5", (4,), file_id=2)
    c = write_file(tmp_path / "c.hdf5", (4,), file_id=3)
    rb = load([SourceSpec(str(a), weight=2), SourceSpec(str(b_), weight=1), SourceSpec(str(c), weight=0)])
    assert rb.batch_counts(100) == [67, 33, 0]
    batch = rb.sample(100, gen())
    f, _, _ = decode(batch)
    assert Counter(f.tolist()) == {1: 67, 2: 33}


def test_weight_none_pools_by_size(tmp_path):
    a = write_file(tmp_path / "a.hdf5", (10, 10, 10), file_id=1)
    b_ = write_file(tmp_path / "b.hdf5", (10,), file_id=2)
    rb = load([SourceSpec(str(a), weight=None), SourceSpec(str(b_), weight=None)])
    assert rb.weights == [0.75, 0.25] and rb.batch_counts(256) == [192, 64]


def test_filter_keys_same_file_read_once(tmp_path):
    masks = {"prior": [b"demo_0", b"demo_1", b"demo_2"], "task": [b"demo_3"], "train": [b"demo_0", b"demo_3"]}
    path = write_file(tmp_path / "cog.hdf5", (5, 5, 5, 4), (True, False, True, True), masks=masks)
    rb = load([SourceSpec(str(path), "prior", 0.5), SourceSpec(str(path), "task", 0.5)])
    assert rb.source_sizes == [15, 4] and rb.files == [str(path)]
    assert rb.num_frames == 15 + 3 + 4 + 1  # every demo once, each with its next_obs frame
    b = rb.sample(200, gen())
    _, demo, _ = decode(b)
    src = b.source.numpy()
    assert set(demo[src == 0].tolist()) == {0, 1, 2} and set(demo[src == 1].tolist()) == {3}
    assert (src == 0).sum() == 100
    # A single filter key; demos outside it are not loaded.
    rb = load(SourceSpec(str(path), "train"))
    assert rb.num_frames == 6 + 5 and rb.num_transitions == 9
    _, demo, _ = decode(rb.sample(100, gen()))
    assert set(demo.tolist()) == {0, 3}


def test_overlapping_sources_count_distinct_transitions(tmp_path):
    path = write_file(tmp_path / "a.hdf5", (5, 5), masks={"first": [b"demo_0"]})
    rb = load([SourceSpec(str(path)), SourceSpec(str(path), "first")])
    assert rb.source_sizes == [10, 5] and rb.num_transitions == 10


def test_natural_demo_order_and_mask_as_str(tmp_path):
    def tamper(f):
        del f["mask/m"]
        f["mask"].create_dataset("m", data=["demo_10", "demo_2"], dtype=h5py.string_dtype())

    path = write_file(tmp_path / "a.hdf5", [2] * 11, masks={"m": [b"demo_1"]}, tamper=tamper)
    rb = load(SourceSpec(str(path), "m"))
    _, demo, _ = decode(rb.sample(50, gen()))
    assert set(demo.tolist()) == {2, 10}
    # Frames are laid out in demo order demo_2 then demo_10 (natural sort, not lexical).
    assert decode_images(rb.frames[CAMS[0]][:1].numpy())[0, 0] == 2


def test_no_image_keys_and_to_device(tmp_path):
    path = write_file(tmp_path / "a.hdf5")
    rb = load(path, image_keys=[], proprio_keys=["robot0_eef_pos"])
    b = rb.sample(8, gen())
    assert set(b.obs) == {"proprio"} and b.obs["proprio"].shape == (8, 3) and rb.image_size is None
    rb2 = load(path, pin_memory=True)  # pinning needs CUDA; ignored without one
    assert rb2.pinned == torch.cuda.is_available()
    assert rb2.to("cpu") is rb2 and rb2.device == torch.device("cpu")
    assert rb2.sample(4, gen()).action.shape == (4, 7)


def test_progress_bar(tmp_path, capsys):
    path = write_file(tmp_path / "a.hdf5", (2, 2))
    load(path, progress=True)
    assert "loading replay" in capsys.readouterr().err
    load(path, progress=False)
    assert "loading replay" not in capsys.readouterr().err


# ---------------------------------------------------------------------- validation: one line, names file and key
def raises(match_parts, fn, *a, **kw):
    with pytest.raises(UserError) as ei:
        fn(*a, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for part in match_parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


def test_missing_file(tmp_path):
    p = str(tmp_path / "nope.hdf5")
    raises([p, "file not found"], load, p)


def test_directory_is_not_a_file(tmp_path):
    raises([str(tmp_path), "not a regular file"], load, str(tmp_path))


def test_garbage_bytes(tmp_path):
    p = tmp_path / "garbage.hdf5"
    p.write_bytes(os.urandom(4096))
    raises([str(p), "not an HDF5 file"], load, str(p))


def test_truncated_file(tmp_path):
    p = write_file(tmp_path / "t.hdf5", (20, 20), ours=True, size=16)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    raises([str(p), "truncated or corrupt"], load, str(p))


def test_corrupt_image_chunk(tmp_path):
    p = write_file(tmp_path / "c.hdf5", (4,), ours=True, size=16)
    with h5py.File(p, "r") as f:
        info = f["data/demo_0/obs/robot0_eye_in_hand_image"].id.get_chunk_info(1)
    with open(p, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)  # not a gzip stream any more
    raises([str(p), "data/demo_0/obs/robot0_eye_in_hand_image", "corrupt"], load, str(p))


def test_no_data_group(tmp_path):
    p = tmp_path / "x.hdf5"
    with h5py.File(p, "w") as f:
        f.create_group("stuff")
    raises([str(p), "no 'data' group", "stuff"], load, str(p))


def test_no_demos(tmp_path):
    p = tmp_path / "x.hdf5"
    with h5py.File(p, "w") as f:
        f.create_group("data")
    raises([str(p), "no demos"], load, str(p))


def test_missing_obs_key_lists_available(tmp_path):
    p = write_file(tmp_path / "a.hdf5")
    msg = raises([str(p), "'frontview_image'", "data/demo_0/obs", "agentview_image", "robot0_eef_pos"],
                 load, str(p), image_keys=["frontview_image"])
    assert "have obs keys" in msg


def test_missing_actions(tmp_path):
    p = write_file(tmp_path / "a.hdf5", tamper=lambda f: f["data/demo_1"].__delitem__("actions"))
    raises([str(p), "'actions'", "data/demo_1"], load, str(p))


def test_images_not_uint8(tmp_path):
    def tamper(f):
        g = f["data/demo_2/obs"]
        arr = g["agentview_image"][()].astype(np.float32)
        del g["agentview_image"]
        g.create_dataset("agentview_image", data=arr)

    p = write_file(tmp_path / "a.hdf5", tamper=tamper)
    raises([str(p), "data/demo_2/obs/agentview_image", "float32", "uint8"], load, str(p))


def test_images_wrong_shape(tmp_path):
    def tamper(f):
        g = f["data/demo_0/obs"]
        arr = g["agentview_image"][()].transpose(0, 3, 1, 2).copy()  # channels first
        del g["agentview_image"]
        g.create_dataset("agentview_image", data=arr)

    p = write_file(tmp_path / "a.hdf5", tamper=tamper)
    raises([str(p), "data/demo_0/obs/agentview_image", "(5, 3, 8, 8)", "(T, H, W, 3)"], load, str(p))
    # A proprio key given as an image key
    p2 = write_file(tmp_path / "b.hdf5")
    raises([str(p2), "robot0_eef_pos", "(T, H, W, 3)"], load, str(p2), image_keys=["robot0_eef_pos"])


def test_expect_image_size(tmp_path):
    p = write_file(tmp_path / "a.hdf5", size=8)
    raises([str(p), "agentview_image", "8x8", "expected 84x84"], load, str(p), expect_image_size=84)
    assert load(p, expect_image_size=(8, 8)).image_size == (8, 8)


def test_cameras_of_different_sizes(tmp_path):
    def tamper(f):
        g = f["data/demo_0/obs"]
        del g["robot0_eye_in_hand_image"]
        g.create_dataset("robot0_eye_in_hand_image", data=np.zeros((5, 16, 16, 3), np.uint8))

    p = write_file(tmp_path / "a.hdf5", next_obs=False, tamper=tamper)
    raises([str(p), "data/demo_0/obs/robot0_eye_in_hand_image", "16x16", "other cameras", "8x8"], load, str(p))
    # next_obs of another size than obs
    q = write_file(tmp_path / "n.hdf5", next_obs=True, tamper=tamper)
    raises([str(q), "data/demo_0/next_obs/robot0_eye_in_hand_image", "8x8", "16x16"], load, str(q))
    # across files
    a = write_file(tmp_path / "s8.hdf5", size=8)
    b = write_file(tmp_path / "s16.hdf5", size=16)
    raises([str(b), "agentview_image", "16x16", "8x8"], load, [str(a), str(b)])


def test_action_dim_mismatch(tmp_path):
    p = write_file(tmp_path / "a.hdf5", action_dim=4)
    raises([str(p), "data/demo_0/actions", "dimension 4", "expected 7"], load, str(p), action_dim=7)
    q = write_file(tmp_path / "b.hdf5", action_dim=7)
    raises([str(p), "actions", "dimension 4", "expected 7"], load, [str(q), str(p)])


def test_nan_in_actions_and_inf_in_rewards(tmp_path):
    def nan_actions(f):
        f["data/demo_1/actions"][2, 3] = np.nan

    def inf_rewards(f):
        f["data/demo_2/rewards"][1] = np.inf

    p = write_file(tmp_path / "a.hdf5", tamper=nan_actions)
    raises([str(p), "data/demo_1/actions", "NaN/inf", "step 2"], load, str(p))
    q = write_file(tmp_path / "b.hdf5", tamper=inf_rewards)
    raises([str(q), "data/demo_2/rewards", "NaN/inf", "step 1"], load, str(q))


def test_missing_filter_key_lists_masks(tmp_path):
    p = write_file(tmp_path / "a.hdf5", masks={"train": [b"demo_0"], "valid": [b"demo_1"]})
    raises([str(p), "mask/prior", "train, valid"], load, SourceSpec(str(p), "prior"))
    q = write_file(tmp_path / "b.hdf5")
    raises([str(q), "mask/train", "have masks: none"], load, SourceSpec(str(q), "train"))


def test_empty_filter_key(tmp_path):
    def tamper(f):
        f["mask"].create_dataset("empty", data=np.array([], dtype="S8"))

    p = write_file(tmp_path / "a.hdf5", masks={"train": [b"demo_0"]}, tamper=tamper)
    raises([str(p), "mask/empty", "is empty"], load, SourceSpec(str(p), "empty"))


def test_filter_key_naming_unknown_demo(tmp_path):
    p = write_file(tmp_path / "a.hdf5", masks={"train": [b"demo_0", b"demo_99"]})
    raises([str(p), "mask/train", "demo_99"], load, SourceSpec(str(p), "train"))


@pytest.mark.parametrize("key,where", [("rewards", "data/demo_1/rewards"), ("dones", "data/demo_1/dones"),
                                       ("agentview_image", "data/demo_1/obs/agentview_image"),
                                       ("robot0_eef_pos", "data/demo_1/obs/robot0_eef_pos")])
def test_inconsistent_lengths(tmp_path, key, where):
    def tamper(f):
        g = f["data/demo_1"] if key in ("rewards", "dones") else f["data/demo_1/obs"]
        arr = g[key][()][:-1]
        del g[key]
        g.create_dataset(key, data=arr)

    p = write_file(tmp_path / "a.hdf5", tamper=tamper)
    raises([str(p), where, "3 steps"], load, str(p))


def test_dones_not_binary(tmp_path):
    def tamper(f):
        f["data/demo_0/dones"][1] = 2

    p = write_file(tmp_path / "a.hdf5", tamper=tamper)
    raises([str(p), "data/demo_0/dones", "expected 0 or 1"], load, str(p))


def test_bad_weights(tmp_path):
    p = str(write_file(tmp_path / "a.hdf5"))
    raises([p, "weight -1.0", ">= 0"], load, [SourceSpec(p, weight=1.0), SourceSpec(p, weight=-1.0)])
    raises([p, "all weights are 0"], load, [SourceSpec(p, weight=0.0), SourceSpec(p, weight=0)])
    raises([p, "weight is None"], load, [SourceSpec(p, weight=None), SourceSpec(p, weight=1.0)])
    raises([p, "weight nan"], load, [SourceSpec(p, weight=float("nan"))])


def test_bad_keys(tmp_path):
    p = str(write_file(tmp_path / "a.hdf5"))
    raises(["image_keys", "agentview_image"], load, p, image_keys=["agentview_image", "agentview_image"])
    raises(["image_keys", "'proprio'"], load, p, image_keys=["proprio"])
    raises(["sources", "none given"], load, [])


def test_invalid_env_args_json(tmp_path):
    def tamper(f):
        f["data"].attrs["env_args"] = "{not json"

    p = write_file(tmp_path / "a.hdf5", tamper=tamper)
    raises([str(p), "env_args", "JSON"], load, str(p))


def test_generator_on_other_device_is_refused(tmp_path):
    rb = load(write_file(tmp_path / "a.hdf5"))
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with pytest.raises(ValueError, match="generator is on"):
        rb.sample(4, torch.Generator(device="cuda"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_resident(tmp_path):
    path = write_file(tmp_path / "a.hdf5", LENGTHS, SUCCESS, next_obs=True)
    rb = load(path, device="cuda")
    g = torch.Generator(device="cuda")
    g.manual_seed(0)
    b = rb.sample(512, g)
    assert b.obs[CAMS[0]].device.type == "cuda" and b.source.device.type == "cuda"
    cpu = Batch(**{k: ({kk: vv.cpu() for kk, vv in v.items()} if isinstance(v, dict) else v.cpu())
                   for k, v in vars(b).items()})
    _, demo, t = decode(cpu)
    _, ndemo, nt = decode(cpu, "next_obs")
    assert (ndemo == demo).all() and (nt == t + 1).all()
    rb.to("cpu")
    assert rb.sample(4, gen()).action.device.type == "cpu"
