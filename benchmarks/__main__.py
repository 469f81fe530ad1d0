"""The benchmark suite: speed and memory, side by side with robomimic and with the compute-only bound.

    python -m benchmarks [--quick] [--device cpu|cuda] [--json OUT] [--only CASE ...] [--budget-gib G]

Cases (each after a warm-up, several repetitions; median and spread = (max - min) / median):
  datagen    generated transitions/s; load time of a 100-episode file
  memory     resident bytes per transition vs raw image bytes of a step; peak RSS / GPU memory; what fits
  pipeline   end-to-end train.py steps/s over the compute-only bound (same update, fixed batch on device)
  dr3        steps/s with DR3 on vs off
  robomimic  our steps/s over robomimic 0.3.0 CQL's (matched encoder; and its default image config)
  rollouts   evaluation env steps/s (1 worker, one per core; 1 and 2 envs per worker) vs a plain robosuite env
             (defaults) and a like-for-like serial loop (our render settings), with each figure's breakdown
  grasp      time to a grasping policy: train.py --task lift (cpu preset) from an empty data/ to >= 50% success
  scaling    (GPU) batch 256/1024 x drq/resnet18 x fp32/bf16 x compile off/on; DDP efficiency with >1 GPU

It prints the machine, then one table (markdown, as pasted into BENCHMARKS.md), and writes everything to
``--json``. Data is made in a temporary folder (a real generated lift dataset), removed at the end unless
``--keep DIR``. ``--quick`` (small images, batches and repetitions) runs in a few minutes on 2 CPU cores and
checks that every case works; its figures are not the ones to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from visual_dr3.errors import say

CASES = ("datagen", "memory", "pipeline", "dr3", "robomimic", "rollouts", "grasp", "scaling")


@dataclass
class Settings:
    """Sizes and repetitions of one suite run (see :func:`settings_for`)."""

    quick: bool
    """Quick mode: smallest sizes that still exercise every case."""
    image_size: int
    """Training image size (square), for the dataset and every training case."""
    batch: int
    """Training batch size of the pipeline and DR3 cases."""
    robomimic_batch: int
    """Batch size of the robomimic comparison (ours measured at the same batch)."""
    warmup: int
    """Untimed training steps before the first block."""
    block: int
    """Training steps per timed block (one repetition)."""
    reps: int
    """Timed blocks (repetitions) per training figure."""
    rm_default_batch: int
    """Batch size of the robomimic default-config comparison (8: robomimic's own image CQL batch)."""
    rm_default_warmup: int
    """Untimed steps of robomimic's default (ResNet18) config, far slower on CPU."""
    rm_default_block: int
    """Steps per block of robomimic's default config."""
    gen_episodes: int
    """Episodes generated (lift, mixed)."""
    gen_workers: int
    """Generator worker processes."""
    gen_horizon: int | None
    """Episode limit of generation (None: the task's)."""
    load_reps: int
    """Loads of the 100-episode file (each in a fresh process)."""
    eval_image_size: int
    """Image size of the rollout case (the issue asks 84x84)."""
    eval_horizon: int
    """Episode length of the rollout case."""
    eval_episodes: int
    """Episodes per rollout repetition."""
    eval_reps: int
    """Rollout repetitions after the warm-up run."""
    scaling_batches: list = field(default_factory=list)
    """Batch sizes of the scaling case."""
    eval_more_sizes: list = field(default_factory=list)
    """Further image sizes of the rollout case, each with its own rows (on CPU: the cpu preset's 48x48)."""
    grid_configs: int | None = None
    """Run only the first N settings of the scaling grid (None: all)."""


def settings_for(quick: bool, device: str) -> Settings:
    gpu = device.startswith("cuda")
    cores = os.cpu_count() or 1
    if quick:
        # (the fewest that still give every figure a spread: 2 repetitions; CI runs this in the test suite)
        # (robomimic's default ResNet18 CQL runs its encoders on every repeated copy of the batch: ~25 s a step at
        # batch 8 on 2 idle cores, so the quick run measures both sides at batch 2, and the matched pair at 8)
        return Settings(True, image_size=32, batch=32, robomimic_batch=8, warmup=1, block=2, reps=2,
                        rm_default_batch=2, rm_default_warmup=1, rm_default_block=1, gen_episodes=2, gen_workers=1, gen_horizon=40, load_reps=2,
                        eval_image_size=32, eval_horizon=10, eval_episodes=2, eval_reps=2,
                        scaling_batches=[16, 32])
    if gpu:
        return Settings(False, image_size=84, batch=256, robomimic_batch=256, warmup=10, block=20, reps=5,
                        rm_default_batch=8, rm_default_warmup=3, rm_default_block=10, gen_episodes=10, gen_workers=min(8, cores), gen_horizon=None,
                        load_reps=3, eval_image_size=84, eval_horizon=100, eval_episodes=2 * cores, eval_reps=3,
                        scaling_batches=[256, 1024])
    return Settings(False, image_size=84, batch=256, robomimic_batch=32, warmup=2, block=3, reps=3,
                    rm_default_batch=8, rm_default_warmup=1, rm_default_block=1, gen_episodes=10, gen_workers=cores, gen_horizon=None, load_reps=3,
                    eval_image_size=84, eval_horizon=100, eval_episodes=2 * cores, eval_reps=3, scaling_batches=[32, 64],
                    eval_more_sizes=[48])


def run_suite(args) -> dict:
    import torch

    import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)
    from benchmarks import common
    from benchmarks.common import skipped

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device visible; expected --device cpu")
    s = settings_for(args.quick, device)
    for name in ("reps", "block", "warmup"):
        if getattr(args, name, None) is not None:
            setattr(s, name, int(getattr(args, name)))
    s.grid_configs = getattr(args, "grid_configs", None)
    if not device.startswith("cuda"):
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))  # (set: it rules)
    machine = common.machine_info(device)
    say(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
         f"GPU {machine['gpu'] or '-'}, torch {machine['torch']}; {'quick' if s.quick else 'full'} settings")
    budget = args.budget_gib
    if budget is None:
        budget = machine.get("gpu_memory_gib") if device.startswith("cuda") else machine["memory_gib"]
    cases = [c for c in CASES if c in (args.only or CASES)]
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vdr3-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows, t_start, failures = [], time.perf_counter(), []
    dataset = tmp / "lift.hdf5"
    try:
        need_data = any(c in cases for c in ("datagen", "memory", "pipeline", "dr3", "robomimic", "scaling"))
        if need_data:
            from benchmarks.data_cases import generate

            say(f"[data] generating {s.gen_episodes} lift episodes at {s.image_size}x{s.image_size} in {tmp}")
            _, gen_rows = generate(dataset, s)
            if "datagen" in cases:
                rows += gen_rows
        for i, case in enumerate(cases, 1):
            say(f"[{i}/{len(cases)}] {case} (elapsed {time.perf_counter() - t_start:.0f} s)")
            try:
                if case == "datagen" or case == "memory":
                    if case == "memory" or "memory" not in cases:
                        from benchmarks.data_cases import memory_and_load

                        new = memory_and_load(dataset, s, "cuda" if device.startswith("cuda") else "cpu", budget)
                        rows += [r for r in new if r.case in cases]
                elif case == "pipeline" or (case == "dr3" and "pipeline" not in cases):
                    from benchmarks.training import pipeline_and_dr3

                    rows += [r for r in pipeline_and_dr3(str(dataset), s, device) if r.case in cases]
                elif case == "robomimic":
                    from benchmarks.robomimic_cmp import compare

                    rows += compare(dataset, s, device)
                elif case == "rollouts":
                    from benchmarks.rollouts import rollouts

                    rows += rollouts(s)
                elif case == "grasp":
                    from benchmarks.time_to_grasp import time_to_grasp

                    rows += time_to_grasp(s)
                elif case == "scaling":
                    from benchmarks.training import scaling

                    rows += scaling(str(dataset), s, device, force_cpu=args.scaling_on_cpu)
            except Exception as e:  # a broken case is reported in the table; the others still run
                failures.append(case)
                say(traceback.format_exc())
                rows.append(skipped(case, "case failed", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t_start
    machine["load_average_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    table = common.format_table(rows)
    met = [r for r in rows if r.met is not None]
    noisy = sum(r.noisy for r in rows)
    print(f"\nvisual-dr3 benchmarks: {machine['cpu']} ({machine['cores']} cores, {machine['memory_gib']} GiB), "
          f"GPU {machine['gpu'] or 'none'}; device {device}; {'quick' if s.quick else 'full'} settings; "
          f"{seconds:.0f} s\n")
    print(table)
    print(f"\ntargets met: {sum(r.met for r in met)}/{len(met) + noisy}"
          + (f"; within noise: {noisy}" if noisy else "")
          + (f"; cases failed: {', '.join(failures)}" if failures else ""))
    result = {"machine": machine, "device": device, "settings": asdict(s), "seconds": seconds,
              "command": " ".join(["python", "-m", "benchmarks", *sys.argv[1:]]),
              "rows": common.rows_to_json(rows), "failed_cases": failures, "table": table}
    if args.json:
        from visual_dr3.fileio import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(result, indent=1))
        say(f"wrote {args.json}")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (minutes on 2 CPU cores)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", default=None, help="write machine, settings and every row to this JSON file")
    p.add_argument("--only", nargs="+", choices=CASES, default=None, help="run only these cases")
    p.add_argument("--budget-gib", type=float, default=None,
                   help="memory budget for 'largest dataset that fits' (default: RAM, or GPU memory on cuda)")
    p.add_argument("--scaling-on-cpu", action="store_true", help="run the scaling grid on CPU too (to try it)")
    p.add_argument("--grid-configs", type=int, default=None, metavar="N",
                   help="run only the first N settings of the scaling grid (default: all 16; a dry run's 2)")
    p.add_argument("--reps", type=int, default=None, metavar="N", help="override the timed blocks per figure")
    p.add_argument("--block", type=int, default=None, metavar="N", help="override the steps per timed block")
    p.add_argument("--warmup", type=int, default=None, metavar="N", help="override the untimed warm-up steps")
    p.add_argument("--keep", default=None, help="make the data in this folder and keep it")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        say(f"error: --device {args.device}: expected cpu or cuda")
        return 2
    result = run_suite(args)
    return 1 if result["failed_cases"] else 0


if __name__ == "__main__":
    sys.exit(main())
