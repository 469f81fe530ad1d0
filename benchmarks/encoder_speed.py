"""Forward+backward time of an encoder + twin Q heads on a stacked [s; s'] batch, and parameter counts.

    python benchmarks/encoder_speed.py                       # drq, 2 cameras 84x84, batch 2x256, 2 threads
    python benchmarks/encoder_speed.py --kind resnet18 --batch 32
    python benchmarks/encoder_speed.py --device cuda --batch 256

One step = encode cat([obs, next_obs]) (2B images per camera), twin Q on the s half at the data action,
critic MSE + DR3 (encoder features, s' side detached) + backward. Reports the median over --reps timed
steps after --warmup untimed ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from visual_dr3.envs.tasks import get_task
from visual_dr3.learner import losses
from visual_dr3.learner.encoders import make_encoder
from visual_dr3.learner.networks import QHeads, TanhGaussianActor, count_parameters

CAMERAS = get_task("lift").image_keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="drq", choices=["drq", "resnet18"])
    ap.add_argument("--batch", type=int, default=256, help="transitions; the encoder sees 2x this")
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--proprio-dim", type=int, default=9)
    ap.add_argument("--action-dim", type=int, default=7)
    ap.add_argument("--feature-dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    keys = CAMERAS[: args.cameras]

    # parameter counts of both encoders at this configuration
    for kind in ("drq", "resnet18"):
        enc = make_encoder(kind, keys, args.image_size, args.proprio_dim, args.feature_dim)
        print(f"params {kind:8s} encoder: {count_parameters(enc):,} (bottleneck in: {enc.trunk_dim})")
    heads = QHeads(args.feature_dim, args.action_dim)
    actor = TanhGaussianActor(args.feature_dim, args.action_dim)
    print(f"params twin Q heads: {count_parameters(heads):,}; actor MLP: {count_parameters(actor):,}")

    enc = make_encoder(args.kind, keys, args.image_size, args.proprio_dim, args.feature_dim).to(dev)
    heads = heads.to(dev)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        enc = enc.to(memory_format=torch.channels_last)
    b2 = 2 * args.batch
    obs = {
        k: torch.randint(0, 256, (b2, 3, args.image_size, args.image_size), dtype=torch.uint8, device=dev)
        .contiguous(memory_format=mf)
        for k in keys
    }
    obs["proprio"] = torch.randn(b2, args.proprio_dim, device=dev)
    action = torch.rand(args.batch, args.action_dim, device=dev) * 2 - 1
    target = torch.randn(args.batch, device=dev)
    params = list(enc.parameters()) + list(heads.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        phi_all = enc(obs)
        phi, phi_next = phi_all[: args.batch], phi_all[args.batch :]
        q1, q2 = heads(phi, action)
        dr3, _ = losses.dr3_loss(phi, phi_next, detach_next=True)
        (losses.critic_td_loss(q1, q2, target) + 0.01 * dr3).backward()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"{args.kind} fwd+bwd, [s; s'] = 2x{args.batch}, {len(keys)} x {args.image_size}x{args.image_size}, "
        f"device={dev}, threads={torch.get_num_threads()}, channels_last={args.channels_last}: "
        f"median {med:.3f} s (min {min(times):.3f}, max {max(times):.3f}, {args.reps} reps) "
        f"= {args.batch / med:.0f} transitions/s"
    )


if __name__ == "__main__":
    main()
