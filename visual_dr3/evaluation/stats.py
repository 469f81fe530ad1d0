"""Evaluation statistics: episode seeds, the episodes of a DDP rank, the Wilson score interval, per-episode
records -> summary.

Pure Python + numpy (no torch): imported by rollout workers and by the parent alike.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

#: two-sided 95% normal quantile, Phi^-1(0.975)
Z95 = 1.959963984540054


def episode_seed(seed: int, episode: int) -> int:
    """Seed of episode ``episode`` in a run with seed ``seed``: a 32-bit integer derived from ``(seed, episode)``
    with numpy's ``SeedSequence`` (well mixed, so neighbouring seeds/episodes do not share streams).

    It depends on nothing else -- not on the number of workers, the worker that runs the episode, DDP ranks or
    retries -- so episode ``i`` starts from the same initial state (object placement, robot joint noise) in
    every run with the same ``seed``.
    """
    if int(seed) < 0 or int(episode) < 0:
        raise ValueError(f"episode_seed: seed and episode must be >= 0 (got {seed}, {episode})")
    return int(np.random.SeedSequence([int(seed), int(episode)]).generate_state(1, dtype=np.uint32)[0])


def rank_episodes(episodes: int, rank: int, world: int) -> list[int]:
    """The episodes rank ``rank`` of ``world`` runs out of ``range(episodes)``: ``rank, rank + world, ...``
    (every episode on exactly one rank; a rank beyond the episodes gets none)."""
    return list(range(rank, episodes, world))


def env_seed_for(seed: int) -> int:
    """Seed with which every rollout worker builds its env in a run with seed ``seed`` (robosuite samples
    some model properties at construction, e.g. Lift's cube size): distinct from every episode seed's stream."""
    return int(np.random.SeedSequence([int(seed), 0x0E17]).generate_state(1, dtype=np.uint32)[0])


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a binomial proportion ``successes / n`` (95% by default).

    ``centre = (p + z²/2n) / (1 + z²/n)``, ``half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)``, clipped to
    [0, 1]. With no trials (``n == 0``) nothing is known: ``(0.0, 1.0)``.
    """
    successes, n = int(successes), int(n)
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n (got {successes}/{n})")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    # exact ends at 0/n and n/n (centre - half is 0 only up to rounding there)
    if successes == 0:
        low = 0.0
    if successes == n:
        high = 1.0
    return low, high


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """``(difference, low, high)`` for ``x1/n1 - x2/n2``: Newcombe's hybrid score interval (method 10 of
    Newcombe, Statistics in Medicine 17, 1998), built from the two Wilson intervals:
    ``low = d - sqrt((p1 - l1)² + (u2 - p2)²)``, ``high = d + sqrt((u1 - p1)² + (p2 - l2)²)``. It treats the
    two samples as independent binomials (95% by default)."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"newcombe_interval: need episodes on both sides (got n1={n1}, n2={n2})")
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def summarize(records: Sequence[Mapping], seconds: float | None = None,
              rollout_seconds: float | None = None) -> dict:
    """Summary of per-episode records (dicts with ``success``, ``return``, ``length``, optional ``error``).

    Episodes that failed with an error (their worker crashed twice) count as unsuccessful in the success
    rate -- they are never dropped -- and are counted in ``errors``. Means of return/length are over all
    episodes (an errored episode has the return and length it reached, usually 0). ``env_steps_per_s`` is
    total env steps / ``seconds`` (wall time of the whole evaluation, worker start-up included);
    ``rollout_steps_per_s`` divides by ``rollout_seconds`` (after the workers were up) when given.
    """
    n = len(records)
    succ = sum(1 for r in records if r.get("success"))
    low, high = wilson_interval(succ, n)
    steps = int(sum(int(r.get("length", 0)) for r in records))
    out = {
        "episodes": n,
        "successes": succ,
        "success_rate": (succ / n) if n else float("nan"),
        "success_ci95_low": low,
        "success_ci95_high": high,
        "mean_return": float(np.mean([float(r.get("return", 0.0)) for r in records])) if n else float("nan"),
        "mean_length": float(np.mean([float(r.get("length", 0)) for r in records])) if n else float("nan"),
        "env_steps": steps,
        "errors": sum(1 for r in records if r.get("error")),
        "retried": sum(1 for r in records if int(r.get("attempts", 1)) > 1),
    }
    if seconds is not None:
        out["seconds"] = round(float(seconds), 3)
        out["env_steps_per_s"] = steps / seconds if seconds > 0 else float("nan")
    if rollout_seconds is not None:
        out["rollout_seconds"] = round(float(rollout_seconds), 3)
        out["rollout_steps_per_s"] = steps / rollout_seconds if rollout_seconds > 0 else float("nan")
    return out


def format_summary(summary: Mapping, title: str = "evaluation",
                   extra: Sequence[tuple[str, str]] = ()) -> str:
    """The summary as a small aligned table (for the CLI); ``extra`` rows are appended."""
    rows = [
        ("episodes", f"{summary['episodes']}"),
        ("success rate", f"{summary['success_rate']:.3f}  ({summary['successes']}/{summary['episodes']}, "
                         f"95% Wilson CI [{summary['success_ci95_low']:.3f}, {summary['success_ci95_high']:.3f}])"),
        ("mean return", f"{summary['mean_return']:.3f}"),
        ("mean length", f"{summary['mean_length']:.1f}"),
        ("env steps", f"{summary['env_steps']}"),
    ]
    if "env_steps_per_s" in summary:
        rows.append(("env steps/s", f"{summary['env_steps_per_s']:.1f} overall"
                     + (f", {summary['rollout_steps_per_s']:.1f} after start-up"
                        if "rollout_steps_per_s" in summary else "")))
        rows.append(("wall time", f"{summary['seconds']:.1f} s"))
    if summary.get("errors") or summary.get("retried"):
        rows.append(("worker errors", f"{summary.get('errors', 0)} episode(s) failed, "
                                      f"{summary.get('retried', 0)} retried"))
    rows.extend(extra)
    width = max(len(k) for k, _ in rows)
    lines = [f"== visual-dr3 {title} =="] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
