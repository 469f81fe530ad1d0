"""Networks: image encoders (phi), twin Q heads, tanh-Gaussian actor, and small utilities.

Observation format (see docs/INTERFACES.md, ``Batch.obs``): a mapping with one uint8 ``(B, 3, H, W)``
tensor per image key and ``"proprio"`` float32 ``(B, P)``. Encoders map it to ``phi`` ``(B, feature_dim)``
= the output of ``Linear -> LayerNorm -> tanh`` on ``cat(per-camera features, proprio)``: the "encoder
features" used by DR3 (bounded in [-1, 1], so a c0 tuned on it transfers across encoders).

Style: compact DrQ-v2-like modules (orthogonal init), no training logic here.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visual_dr3.envs.tasks import PROPRIO_KEY

__all__ = [
    "ConvEncoder",
    "ResNetEncoder",
    "SpatialSoftmax",
    "make_encoder",
    "ENCODER_KINDS",
    "QHeads",
    "TanhGaussianActor",
    "count_parameters",
    "polyak_update",
    "weight_init",
]

LOG2 = math.log(2.0)


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


def _mlp(in_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU(inplace=True)]
        in_dim = h
    return nn.Sequential(*layers)


def _first_layer_broadcast(layer: nn.Linear, phi: Tensor, action: Tensor) -> Tensor:
    """``layer(cat([phi, action], -1))`` without materialising the concat or repeating phi.

    ``phi (*lead, D)`` with ``action (*lead, A)``, or ``action (*lead, N, A)`` (phi shared by N actions).
    """
    d = phi.shape[-1]
    h_phi = F.linear(phi, layer.weight[:, :d])
    h_act = F.linear(action, layer.weight[:, d:], layer.bias)
    if action.dim() == phi.dim() + 1:
        h_phi = h_phi.unsqueeze(-2)
    elif action.shape[:-1] != phi.shape[:-1]:
        raise ValueError(f"QHeads: phi {tuple(phi.shape)} and action {tuple(action.shape)} do not match")
    return h_phi + h_act


class QHeads(nn.Module):
    """Twin Q MLPs on ``cat([phi, action])`` (ReLU hidden layers, scalar output).

    ``forward(phi, action)``: ``phi (B, D)``, ``action (B, A)`` -> ``(q1, q2)`` each ``(B,)``; or
    ``action (B, N, A)`` -> each ``(B, N)`` (phi is not repeated: its part of the first layer is computed
    once per state and broadcast). With ``return_penultimate=True`` also returns the last hidden
    activations (after ReLU) of both heads stacked: ``(2, B, H)`` / ``(2, B, N, H)``, for DR3 on the
    penultimate layer.
    """

    def __init__(self, feature_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        if not hidden:
            raise ValueError("QHeads: need at least one hidden layer")
        self.feature_dim, self.action_dim, self.hidden = feature_dim, action_dim, tuple(hidden)
        self.heads = nn.ModuleList()
        for _ in range(2):
            body = _mlp(feature_dim + action_dim, hidden)
            self.heads.append(nn.ModuleDict({"body": body, "out": nn.Linear(hidden[-1], 1)}))
        self.apply(weight_init)

    def _head(self, head: nn.ModuleDict, phi: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        body = head["body"]
        x = F.relu(_first_layer_broadcast(body[0], phi, action))
        for layer in list(body)[2:]:
            x = layer(x)
        return head["out"](x).squeeze(-1), x

    def forward(self, phi: Tensor, action: Tensor, return_penultimate: bool = False):
        q1, h1 = self._head(self.heads[0], phi, action)
        q2, h2 = self._head(self.heads[1], phi, action)
        if return_penultimate:
            return q1, q2, torch.stack([h1, h2])
        return q1, q2


class TanhGaussianActor(nn.Module):
    """SAC policy on ``phi``: ``a = tanh(u)``, ``u ~ N(mean(phi), exp(log_std(phi)))``.

    ``log_std`` is clamped to ``[log_std_min, log_std_max]``. Log-probabilities include the tanh change of
    variables, ``log pi(a) = log N(u) - sum_i log(1 - tanh(u_i)^2)`` with the stable form
    ``log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))``.
    """

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.action_dim = action_dim
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)
        self.body = _mlp(feature_dim, hidden)
        self.out = nn.Linear(hidden[-1] if hidden else feature_dim, 2 * action_dim)
        self.apply(weight_init)

    def forward(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)`` of the pre-tanh Gaussian, each ``(*lead, A)``; log_std clamped."""
        mean, log_std = self.out(self.body(phi)).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    @staticmethod
    def _log_prob_pre_tanh(u: Tensor, eps: Tensor, log_std: Tensor) -> Tensor:
        # log N(u; mean, std) with eps = (u - mean) / std, minus the tanh log-det; summed over A.
        normal = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        log_det = 2.0 * (LOG2 - u - F.softplus(-2.0 * u))
        return (normal - log_det).sum(-1)

    def sample(
        self, phi: Tensor, generator: torch.Generator | None = None, num_samples: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised sample: ``(action in (-1, 1), log_prob)``.

        ``num_samples=None``: action ``(B, A)``, log_prob ``(B,)``. ``num_samples=N``: ``(B, N, A)`` and
        ``(B, N)`` (the network runs once per state). ``generator`` must be on phi's device.
        """
        mean, log_std = self(phi)
        if num_samples is not None:
            mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
            shape = (*phi.shape[:-1], num_samples, self.action_dim)
        else:
            shape = mean.shape
        eps = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * eps
        return torch.tanh(u), self._log_prob_pre_tanh(u, eps, log_std)

    def log_prob(self, phi: Tensor, action: Tensor) -> Tensor:
        """log pi(action | phi) for given actions (e.g. dataset actions for BC): ``(*lead,)``.

        ``action`` ``(*lead, A)`` or ``(*lead, N, A)``; clipped to ``±(1 - 1e-6)`` before ``atanh``.
        """
        mean, log_std = self(phi)
        if action.dim() == phi.dim() + 1:
            mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
        lim = 1.0 - 1e-6
        u = torch.atanh(action.clamp(-lim, lim))
        eps = (u - mean) * torch.exp(-log_std)
        return self._log_prob_pre_tanh(u, eps, log_std)

    def mode(self, phi: Tensor) -> Tensor:
        """Deterministic action ``tanh(mean)`` (for evaluation)."""
        return torch.tanh(self(phi)[0])


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def polyak_update(target_params: Iterable[Tensor], online_params: Iterable[Tensor], tau: float) -> None:
    """In place ``target <- (1 - tau) * target + tau * online`` for all tensors at once (``_foreach_lerp_``).

    Pass ``target.parameters()`` and ``online.parameters()`` (same order). Buffers are not touched.
    """
    target_params, online_params = list(target_params), list(online_params)
    if len(target_params) != len(online_params):
        raise ValueError(f"polyak_update: {len(target_params)} target vs {len(online_params)} online tensors")
    if target_params:
        torch._foreach_lerp_(target_params, online_params, tau)
