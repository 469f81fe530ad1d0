"""DrQ random shift: exact replicate-pad-and-crop, a different shift per sample, uint8 kept, pad 0 = identity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visual_dr3.data.augment import draw_shift_offsets, random_shift, shift_images


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def images(B=16, C=3, H=12, W=10, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (B, C, H, W), generator=gen(seed), dtype=torch.uint8)


def reference(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Literal DrQ: replicate-pad then crop (H, W) at (dy, dx), one sample at a time."""
    H, W = x.shape[-2:]
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate").to(torch.uint8)
    return torch.stack([padded[i, :, dy:dy + H, dx:dx + W] for i, (dy, dx) in enumerate(offsets.tolist())])


@pytest.mark.parametrize("pad", [1, 2, 4])
def test_random_shift_matches_pad_and_crop(pad):
    x = images()
    out = random_shift(x, pad, gen(5))
    offsets = draw_shift_offsets(x.shape[0], pad, gen(5))  # the same draws as random_shift's
    assert offsets.min() >= 0 and offsets.max() <= 2 * pad
    assert torch.equal(out, reference(x, offsets, pad))
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_every_offset_exact_and_center_is_identity():
    x = images(B=1, H=9, W=7)
    pad = 3
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            off = torch.tensor([[dy, dx]])
            out = shift_images(x, off, pad)
            assert torch.equal(out, reference(x, off, pad))
            # Interior content moves exactly by (pad - dy, pad - dx).
            sy, sx = dy - pad, dx - pad
            ys, xs = slice(max(0, -sy), min(9, 9 - sy)), slice(max(0, -sx), min(7, 7 - sx))
            yt, xt = slice(max(0, sy), min(9, 9 + sy)), slice(max(0, sx), min(7, 7 + sx))
            assert torch.equal(out[..., ys, xs], x[..., yt, xt])
    assert torch.equal(shift_images(x, torch.tensor([[pad, pad]]), pad), x)


def test_shift_edges_replicate():
    x = torch.arange(25, dtype=torch.uint8).view(1, 1, 5, 5)
    out = shift_images(x, torch.tensor([[0, 4]]), 2)  # content up-left by (-2, +2): rows clamp at top
    rows = [0, 0, 0, 1, 2]
    cols = [2, 3, 4, 4, 4]
    assert torch.equal(out[0, 0], x[0, 0][rows][:, cols])


def test_different_per_sample_and_same_across_channels():
    x = images(B=64, C=6)
    g = gen(1)
    offsets = draw_shift_offsets(64, 4, gen(1))
    out = random_shift(x, 4, g)
    assert len({tuple(o) for o in offsets.tolist()}) > 20  # per-sample offsets, not one per batch
    for i in range(64):  # every channel of a sample gets that sample's shift
        assert torch.equal(out[i:i + 1], reference(x[i:i + 1], offsets[i:i + 1], 4))
    assert not torch.equal(random_shift(x, 4, gen(2)), out)  # another seed, another shift


def test_pad_zero_is_identity_and_bad_pad():
    x = images()
    assert torch.equal(random_shift(x, 0, gen()), x)
    g = gen(3)
    state = g.get_state()
    random_shift(x, 0, g)
    assert torch.equal(g.get_state(), state)  # nothing drawn
    with pytest.raises(ValueError):
        random_shift(x, -1, gen())


def test_non_contiguous_input_and_other_dtypes():
    x = images(B=8).permute(0, 1, 3, 2)  # (B, C, W, H) view, not contiguous
    offsets = draw_shift_offsets(8, 2, gen(4))
    assert torch.equal(random_shift(x, 2, gen(4)), reference(x.contiguous(), offsets, 2))
    xf = images(B=4).float()
    off = draw_shift_offsets(4, 2, gen(9))
    out = random_shift(xf, 2, gen(9))
    assert out.dtype == torch.float32
    assert torch.equal(out.to(torch.uint8), reference(xf.to(torch.uint8), off, 2))
