"""``python eval.py --checkpoint PATH --episodes N``: the command line of :mod:`visual_dr3.evaluation.evaluate`.

Top-level imports are light (no torch, no robosuite): rollout workers are spawned processes that re-import
the main module (``eval.py`` -> this file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from visual_dr3.app.help_text import ENVIRONMENT, EVAL_EXIT_CODES, HelpFormatter, epilog
from visual_dr3.errors import OneLineParser, UserError, cli_entry, command_name, say
from visual_dr3.evaluation.evaluate import WEIGHTS, evaluate_checkpoint
from visual_dr3.evaluation.pool import ENVS_PER_WORKER, POLICY_IN, POLICY_IN_CHOICES


def _int_arg(flag: str, minimum: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise UserError(f"{flag}: got {s!r}; expected an integer >= {minimum}") from None
        if v < minimum:
            raise UserError(f"{flag}: got {v}; expected an integer >= {minimum}")
        return v

    return parse


EXAMPLES = (
    "eval.py --checkpoint runs/lift/checkpoints/last.ckpt    # as training's evaluation: same episodes, mean action",
    "eval.py --checkpoint runs/lift/checkpoints/best.ckpt --episodes 50 --workers 2 --video videos/ --json eval.json",
    "eval.py --checkpoint runs/lift/checkpoints/last.ckpt --seed 7 --sample   # other episodes, sampled actions",
)


def build_parser() -> argparse.ArgumentParser:
    prog = command_name("eval.py")
    p = OneLineParser(
        prog=prog, formatter_class=HelpFormatter,
        description="Roll a trained visual-dr3 policy out in simulation (robosuite), with parallel env workers; "
                    "prints the success rate\nwith a 95% Wilson interval and writes per-episode records.\n\n"
                    "By default it acts as training's evaluation does, so that its success rate is the logged "
                    "eval/success_rate:\nthe mean action, and the training run's seed, eval_episodes and "
                    "eval_horizon (from the checkpoint).",
        epilog=epilog(tuple(e.replace("eval.py", prog, 1) for e in EXAMPLES), ENVIRONMENT, EVAL_EXIT_CODES))
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint written by train.py (e.g. runs/lift/checkpoints/last.ckpt)")
    p.add_argument("--episodes", type=_int_arg("--episodes", 1), default=None,
                   help="episodes to run (default: the training run's eval_episodes, 20 if it has none)")
    p.add_argument("--workers", type=_int_arg("--workers", 1), default=1,
                   help="env worker processes, one env each (default 1; about one per free CPU core)")
    p.add_argument("--envs-per-worker", type=_int_arg("--envs-per-worker", 1), default=ENVS_PER_WORKER,
                   help="envs per worker, stepped in turn: one steps while the policy acts for the other "
                        f"(default {ENVS_PER_WORKER})")
    p.add_argument("--policy-in", default=POLICY_IN, choices=list(POLICY_IN_CHOICES),
                   help="where the policy acts: in the parent, batched over the workers' observations, or in each "
                        "worker (its own CPU copy; one env per worker); default auto: in the workers when the "
                        "policy is on the CPU and the workers take every core. In the workers an episode's "
                        "trajectory is exactly training's (one observation at a time); batched, float rounding "
                        "can differ, and the simulation can amplify it")
    p.add_argument("--seed", type=_int_arg("--seed", 0), default=None,
                   help="run seed: episode i starts from a seed derived from (seed, i) (default: the training "
                        "run's seed, so the episodes are those of its logged evaluation)")
    acting = p.add_mutually_exclusive_group()
    acting.add_argument("--sample", dest="deterministic", action="store_false",
                        help="sample actions from the policy's distribution instead of acting with its mean")
    acting.add_argument("--deterministic", dest="deterministic", action="store_true",
                        help="act with the mean action tanh(mean), as training's evaluation does (the default)")
    p.set_defaults(deterministic=True)
    p.add_argument("--weights", default="auto", choices=list(WEIGHTS),
                   help="act with the trained weights or their moving average (algo.policy_ema); "
                        "default auto: the average when the checkpoint has one")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the policy runs (default auto: cuda when available)")
    p.add_argument("--video", metavar="DIR", default=None,
                   help="write mp4s of the first --video-episodes episodes here (cameras side by side)")
    p.add_argument("--video-episodes", type=_int_arg("--video-episodes", 0), default=5,
                   help="how many episodes (the first K) get a video with --video (default 5)")
    p.add_argument("--json", metavar="OUT", default=None, help="write the report (summary + per-episode records) here")
    p.add_argument("--horizon", type=_int_arg("--horizon", 1), default=None,
                   help="episode limit in env steps (default: the training run's eval_horizon, else the "
                        "checkpoint env's horizon, the task's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    from visual_dr3.evaluation.records import RolloutError
    from visual_dr3.evaluation.stats import format_summary

    try:
        report = evaluate_checkpoint(
            args.checkpoint, args.episodes, workers=args.workers, seed=args.seed,
            envs_per_worker=args.envs_per_worker, policy_in=args.policy_in,
            deterministic=args.deterministic, device=args.device, video_dir=args.video,
            video_episodes=args.video_episodes, horizon=args.horizon, json_out=args.json,
            progress=not args.no_progress, weights=args.weights)
    except RolloutError as e:
        say(f"error: evaluation failed: {' '.join(str(e).split())}")
        raise SystemExit(1) from None
    same = " (as training's evaluation)" if report["as_training_eval"] else ""
    extra = [("seeds", f"run seed {report['seed']}; episode i starts from episode_seed(seed, i){same}"),
             ("policy", ("mean action, tanh(mean)" if report["deterministic"] else "stochastic (sampled, --sample)")
              + (", moving-average weights" if report["weights"] == "ema" else "")
              + (", acting in each worker" if report["policy_in"] == "workers" else ", batched in the parent"))]
    if args.json:
        extra.append(("json", str(args.json)))
    videos = [r["video"] for r in report["records"] if r.get("video")]
    if videos:
        extra.append(("videos", f"{len(videos)} in {args.video}"))
    print(format_summary(report["summary"], extra=extra,
                         title=f"evaluation: {report['task']} (step {report['global_step']}, "
                               f"{Path(args.checkpoint).name}, {report['workers']} worker(s), {report['device']})"),
          flush=True)
    return report
