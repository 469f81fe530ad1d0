"""Image encoders (phi): the observation's cameras and proprio to one feature vector.

Observation format (see docs/INTERFACES.md, ``Batch.obs``): a mapping with one uint8 ``(B, 3, H, W)``
tensor per image key and ``"proprio"`` float32 ``(B, P)``. Encoders map it to ``phi`` ``(B, feature_dim)``
= the output of ``Linear -> LayerNorm -> tanh`` on ``cat(per-camera features, proprio)``: the "encoder
features" used by DR3 (bounded in [-1, 1], so a c0 tuned on it transfers across encoders).

Style: compact DrQ-v2-like modules (orthogonal init), no training logic here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from visual_dr3.envs.tasks import PROPRIO_KEY

__all__ = ["ConvEncoder", "ResNetEncoder", "SpatialSoftmax", "make_encoder", "ENCODER_KINDS", "weight_init"]


def weight_init(m: nn.Module) -> None:
    """DrQ-v2's init: orthogonal weights (ReLU gain for convs), zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight.data)
        if m.bias is not None:
            m.bias.data.fill_(0.0)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.orthogonal_(m.weight.data, nn.init.calculate_gain("relu"))
        if m.bias is not None:
            m.bias.data.fill_(0.0)

def _hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def _normalize_uint8(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-0.5, 0.5] (keeps the memory format, e.g. channels_last)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"encoder: images must be uint8 (B, 3, H, W) in [0, 255], got {x.dtype}")
    return x.float() / 255.0 - 0.5


class _EncoderBase(nn.Module):
    """Per-camera trunks + proprio concat + ``Linear -> LayerNorm -> tanh`` bottleneck to ``feature_dim``."""

    image_keys: tuple[str, ...]
    proprio_dim: int
    feature_dim: int

    def _build_bottleneck(self, trunk_dim: int, proprio_features: int = 0) -> None:
        """``proprio_features`` 0: one bottleneck over cameras + proprio. N > 0: cameras -> ``feature_dim - N``
        and proprio its own ``Linear -> LayerNorm -> tanh`` to N, concatenated (no gain measured at N = 64)."""
        n = int(proprio_features)
        if n < 0 or (n and (n >= self.feature_dim or not self.proprio_dim)):
            raise ValueError(f"proprio_features {n}: expected 0, or 1..{self.feature_dim - 1} with proprio inputs")
        self.proprio_features = n
        self.trunk_dim = trunk_dim  # flattened camera features + proprio
        # Proprio standardisation (x - mean) / std with the dataset's statistics (identity until set). Not in the
        # state_dict: the owner sets them from the statistics it keeps (DR3CQL: its hyperparameters, so they are in
        # every checkpoint), and checkpoints written before this existed still load.
        self.register_buffer("proprio_mean", torch.zeros(self.proprio_dim), persistent=False)
        self.register_buffer("proprio_std", torch.ones(self.proprio_dim), persistent=False)
        image_in = trunk_dim - self.proprio_dim if n else trunk_dim
        self.bottleneck = nn.Sequential(
            nn.Linear(image_in, self.feature_dim - n), nn.LayerNorm(self.feature_dim - n), nn.Tanh()
        )
        self.proprio_head = nn.Sequential(nn.Linear(self.proprio_dim, n), nn.LayerNorm(n), nn.Tanh()) if n else None

    def _camera_features(self, key: str, image: Tensor) -> Tensor:  # (B, C_k) per camera
        raise NotImplementedError

    def trunk(self, obs: Mapping[str, Tensor]) -> Tensor:
        """``cat([flattened features of each camera, proprio], -1)``: ``(B, trunk_dim)``, before the bottleneck."""
        parts = [self._camera_features(k, obs[k]) for k in self.image_keys]
        if self.proprio_dim:
            proprio = (obs[PROPRIO_KEY] - self.proprio_mean) / self.proprio_std
            parts.append(proprio.to(parts[0].dtype))
        return torch.cat(parts, dim=-1)

    def set_proprio_stats(self, mean, std, min_std: float = 1e-3) -> None:
        """Standardise proprio with these per-dimension statistics (std floored at ``min_std``)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(self.proprio_dim)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(self.proprio_dim).clamp_min(min_std)
        self.proprio_mean.copy_(mean)
        self.proprio_std.copy_(std)

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        """``phi = tanh(LayerNorm(Linear(trunk(obs))))`` ``(B, feature_dim)`` (see ``_build_bottleneck`` for N > 0)."""
        x = self.trunk(obs)
        if not self.proprio_features:
            return self.bottleneck(x)
        cut = self.trunk_dim - self.proprio_dim
        return torch.cat([self.bottleneck(x[:, :cut]), self.proprio_head(x[:, cut:])], dim=-1)


class ConvEncoder(_EncoderBase):
    """DrQ-v2 style conv encoder, one conv stack per camera (separate weights).

    Per camera: ``num_layers`` 3x3 convs with ``channels`` channels, the first with stride 2, ReLU after
    each, no padding; output flattened (``channels * h' * w'``, 32*35*35 = 39200 for 84x84) or, with
    ``pool="spatial_softmax"``, reduced to ``num_kp`` soft-argmax keypoints (``2 * num_kp`` numbers). Images
    are uint8 ``(B, 3, H, W)`` (any memory format), scaled to ``x / 255 - 0.5`` inside.
    """

    def __init__(
        self,
        image_keys: Sequence[str],
        image_size: int | Sequence[int],
        proprio_dim: int,
        feature_dim: int = 256,
        channels: int = 32,
        num_layers: int = 4,
        pool: str = "flatten",
        num_kp: int = 32,
        proprio_features: int = 0,
    ):
        super().__init__()
        if not image_keys:
            raise ValueError("ConvEncoder: need at least one image key")
        if pool not in ("flatten", "spatial_softmax"):
            raise ValueError(f"ConvEncoder: pool {pool!r}; expected 'flatten' or 'spatial_softmax'")
        self.image_keys = tuple(image_keys)
        self.proprio_dim = int(proprio_dim)
        self.feature_dim = int(feature_dim)
        h, w = _hw(image_size)
        out_h, out_w = (h - 3) // 2 + 1 - 2 * (num_layers - 1), (w - 3) // 2 + 1 - 2 * (num_layers - 1)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"ConvEncoder: image_size {h}x{w} too small for {num_layers} conv layers")
        self.convs = nn.ModuleDict()
        for k in self.image_keys:
            layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, stride=2), nn.ReLU(inplace=True)]
            for _ in range(num_layers - 1):
                layers += [nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(inplace=True)]
            self.convs[k] = nn.Sequential(*layers)
        self.pools = nn.ModuleDict()
        if pool == "spatial_softmax":
            for k in self.image_keys:
                self.pools[k] = SpatialSoftmax(channels, out_h, out_w, num_kp)
            self.camera_dim = 2 * num_kp
        else:
            self.camera_dim = channels * out_h * out_w
        self._build_bottleneck(self.camera_dim * len(self.image_keys) + self.proprio_dim, proprio_features)
        self.apply(weight_init)

    def _camera_features(self, key: str, image: Tensor) -> Tensor:
        x = self.convs[key](_normalize_uint8(image))
        return self.pools[key](x) if key in self.pools else x.flatten(1)


class SpatialSoftmax(nn.Module):
    """Spatial soft-argmax keypoints (robomimic's ``SpatialSoftmax``, Levine et al. 2016).

    ``(B, C, H, W)`` -> 1x1 conv to ``num_kp`` maps -> softmax over the H*W locations (temperature 1) ->
    expected (x, y) in [-1, 1] per keypoint -> ``(B, 2 * num_kp)``.
    """

    def __init__(self, in_channels: int, height: int, width: int, num_kp: int = 32):
        super().__init__()
        self.num_kp = num_kp
        self.keypoints = nn.Conv2d(in_channels, num_kp, kernel_size=1)
        # a 1-pixel axis sits at 0 (the centre), not at linspace's -1
        lin = lambda n: torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)  # noqa: E731
        ys, xs = torch.meshgrid(lin(height), lin(width), indexing="ij")
        self.register_buffer("pos", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        attn = torch.softmax(self.keypoints(x).flatten(2), dim=-1)  # (B, K, H*W)
        return (attn @ self.pos.to(attn.dtype)).flatten(1)  # (B, K*2): (x, y) per keypoint


class ResNetEncoder(_EncoderBase):
    """ResNet-18 trunk per camera (torchvision, random init, no download) with GroupNorm instead of
    BatchNorm (``num_groups = channels // 16``, as diffusion_policy's ``replace_bn_with_gn``), global
    average pool and fc removed, then :class:`SpatialSoftmax` (``num_kp`` keypoints -> ``2*num_kp``
    features, robomimic's ``ResNet18Conv + SpatialSoftmax``), then the shared proprio concat + bottleneck.
    """

    def __init__(
        self,
        image_keys: Sequence[str],
        image_size: int | Sequence[int],
        proprio_dim: int,
        feature_dim: int = 256,
        num_kp: int = 32,
        proprio_features: int = 0,
    ):
        super().__init__()
        from torchvision.models import resnet18  # lazy: torchvision import is slow

        if not image_keys:
            raise ValueError("ResNetEncoder: need at least one image key")
        self.image_keys = tuple(image_keys)
        self.proprio_dim = int(proprio_dim)
        self.feature_dim = int(feature_dim)
        h, w = _hw(image_size)
        self.convs = nn.ModuleDict()
        self.pools = nn.ModuleDict()
        for k in self.image_keys:
            net = resnet18(weights=None, norm_layer=lambda c: nn.GroupNorm(max(1, c // 16), c))
            trunk = nn.Sequential(*list(net.children())[:-2])  # drop avgpool, fc
            with torch.no_grad():
                _, c, fh, fw = trunk(torch.zeros(1, 3, h, w)).shape
            self.convs[k] = trunk
            self.pools[k] = SpatialSoftmax(c, fh, fw, num_kp)
        self.camera_dim = 2 * num_kp
        self._build_bottleneck(self.camera_dim * len(self.image_keys) + self.proprio_dim, proprio_features)
        for head in (self.bottleneck, self.proprio_head or nn.Identity()):
            head.apply(weight_init)

    def _camera_features(self, key: str, image: Tensor) -> Tensor:
        return self.pools[key](self.convs[key](_normalize_uint8(image)))


ENCODER_KINDS = {"drq": ConvEncoder, "resnet18": ResNetEncoder}


def make_encoder(
    kind: str,
    image_keys: Sequence[str],
    image_size: int | Sequence[int],
    proprio_dim: int,
    feature_dim: int = 256,
    **kwargs,
) -> _EncoderBase:
    """Build an encoder by name: ``"drq"`` (:class:`ConvEncoder`) or ``"resnet18"`` (:class:`ResNetEncoder`).

    Extra keyword arguments go to the class (``channels``/``num_layers``/``pool`` for drq, ``num_kp`` for both,
    ``proprio_features`` for both).
    """
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown encoder kind {kind!r} (options: {', '.join(ENCODER_KINDS)})")
    return ENCODER_KINDS[kind](image_keys, image_size, proprio_dim, feature_dim, **kwargs)
