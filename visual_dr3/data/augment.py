"""DrQ random shift on uint8 image batches, batched on the tensor's device.

``random_shift(images, pad, generator)`` is exactly "replicate-pad by ``pad`` then crop back to (H, W) at an
integer offset (dy, dx) in [0, 2*pad] per sample" (DrQ, Kostrikov et al. 2020), batched (no loop over samples):
output pixel (y, x) is input pixel (clamp(y + dy - pad, 0, H-1), clamp(x + dx - pad, 0, W-1)). Offset
(pad, pad) leaves a sample unchanged; pad 0 is the identity. The result stays uint8 (any dtype works: it is
copies and an index_select). Offsets given to :func:`shift_images` must lie in [0, 2*pad] (not checked).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_shift", "draw_shift_offsets", "shift_images", "replicate_pad"]


def draw_shift_offsets(batch_size: int, pad: int, generator: torch.Generator,
                       device: torch.device | str | None = None) -> Tensor:
    """Offsets ``(B, 2)`` int64 — columns (dy, dx) — uniform in [0, 2*pad], from one ``randint`` call."""
    return torch.randint(0, 2 * pad + 1, (batch_size, 2), generator=generator,
                         device=device if device is not None else generator.device)


def replicate_pad(images: Tensor, pad: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H + 2 pad, W + 2 pad), edges repeated; any dtype, any device (plain copies:
    ``F.pad(mode="replicate")`` is not implemented for uint8 on every device)."""
    B, C, H, W = images.shape
    p = pad
    out = images.new_empty((B, C, H + 2 * p, W + 2 * p))
    out[:, :, p:p + H, p:p + W] = images
    out[:, :, p:p + H, :p] = images[:, :, :, :1]
    out[:, :, p:p + H, p + W:] = images[:, :, :, W - 1:]
    out[:, :, :p, :] = out[:, :, p:p + 1, :]
    out[:, :, p + H:, :] = out[:, :, p + H - 1:p + H, :]
    return out


def shift_images(images: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """Crop of the replicate-padded ``images`` (B, C, H, W) at per-sample ``offsets`` (B, 2) = (dy, dx).

    The crops are gathered in one ``index_select`` from an overlapping strided view of the padded batch
    whose first dimension is the flat start offset of a (C, H, W) window, so each sample's crop is one
    indexed row: about the cost of two copies of the batch (a per-element gather was ~8x slower on CPU).
    """
    if images.ndim != 4:
        raise ValueError(f"shift_images: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    B, C, H, W = images.shape
    if B == 0 or C == 0 or H == 0 or W == 0:
        return images.clone()
    dev = images.device
    Hp, Wp = H + 2 * pad, W + 2 * pad
    flat = replicate_pad(images, pad).view(-1)
    span = (C - 1) * Hp * Wp + (H - 1) * Wp + (W - 1)  # last element of a window, from its start
    windows = flat.as_strided((flat.numel() - span, C, H, W), (1, Hp * Wp, Wp, 1))
    offsets = offsets.to(device=dev, dtype=torch.int64)
    starts = torch.arange(B, device=dev) * (C * Hp * Wp) + offsets[:, 0] * Wp + offsets[:, 1]
    return windows.index_select(0, starts)


def random_shift(images: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """DrQ augmentation: replicate-pad by ``pad``, crop back at an integer offset per sample drawn from
    ``generator`` (on the images' device) in [0, 2*pad]. uint8 (B, C, H, W) in, same dtype/shape out.

    Offsets are drawn as :func:`draw_shift_offsets` ``(B, pad, generator)``; ``pad == 0`` returns ``images``
    itself and draws nothing.
    """
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"random_shift: pad must be >= 0, got {pad}")
    if pad == 0 or images.shape[0] == 0:
        return images
    offsets = draw_shift_offsets(images.shape[0], pad, generator, images.device)
    return shift_images(images, offsets, pad)
