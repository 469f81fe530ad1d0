"""Differences in success between conditions, and whether each is within noise.

For two conditions and one evaluation step, the seeds both evaluated at that step are paired (same seed, same
data, same evaluation episodes): the difference of the pooled success rates gets Newcombe's 95% interval, and
each seed's own difference (in successes) is listed. A difference is called ("higher" / "lower") only when the
interval excludes 0 **and** every paired seed moved the same way; otherwise it is "within noise". The interval
treats episodes as independent, so it is too narrow when seeds differ a lot; the per-seed condition is the
guard against a difference carried by one seed. No torch, no matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from visual_dr3.evaluation.stats import newcombe_interval
from visual_dr3.report.runs import Condition, EvalPoint

HIGHER, LOWER, NOISE = "higher", "lower", "within noise"
#: the interval excludes 0 but the seeds do not all move that way: within noise too, for a different reason
SEEDS_DISAGREE = "within noise (seeds disagree)"


@dataclass
class Difference:
    """``b - a`` in success at one evaluation step, over the seeds both conditions evaluated there."""
    step: int
    seeds: list
    successes: tuple[int, int]  # (a, b), pooled over the paired seeds
    episodes: tuple[int, int]
    diff: float  # pooled success rate of b minus that of a
    low: float
    high: float
    per_seed: list[int]  # b's successes minus a's, per paired seed (in `seeds` order)
    verdict: str  # HIGHER, LOWER, NOISE or SEEDS_DISAGREE


def verdict(low: float, high: float, per_seed: Sequence[int]) -> str:
    """``higher`` / ``lower`` when the interval excludes 0 and every seed's difference has that sign;
    ``within noise (seeds disagree)`` when the interval excludes 0 but some seed did not move that way (tied or
    opposite); ``within noise`` when the interval contains 0."""
    if low > 0:
        return HIGHER if all(d > 0 for d in per_seed) else SEEDS_DISAGREE
    if high < 0:
        return LOWER if all(d < 0 for d in per_seed) else SEEDS_DISAGREE
    return NOISE


def _by_seed(cond: Condition) -> dict:
    """``{seed: {step: EvalPoint}}`` for the runs whose evaluations carry episode counts."""
    out: dict = {}
    for r in cond.runs:
        pts = {e.step: e for e in r.evals if e.episodes is not None and e.successes is not None}
        if pts:
            out[r.seed] = pts
    return out


def differences(a: Condition, b: Condition) -> list[Difference]:
    """``b - a`` at every evaluation step where at least one seed evaluated both (steps in order)."""
    ea, eb = _by_seed(a), _by_seed(b)
    seeds = [s for s in ea if s in eb]
    steps = sorted({st for s in seeds for st in ea[s] if st in eb[s]})
    out = []
    for st in steps:
        paired = [s for s in seeds if st in ea[s] and st in eb[s]]
        pa: list[EvalPoint] = [ea[s][st] for s in paired]
        pb: list[EvalPoint] = [eb[s][st] for s in paired]
        xa, na = sum(e.successes for e in pa), sum(e.episodes for e in pa)
        xb, nb = sum(e.successes for e in pb), sum(e.episodes for e in pb)
        d, lo, hi = newcombe_interval(xb, nb, xa, na)
        per_seed = [int(y.successes) - int(x.successes) for x, y in zip(pa, pb)]
        out.append(Difference(st, paired, (xa, xb), (na, nb), d, lo, hi, per_seed, verdict(lo, hi, per_seed)))
    return out


def compared(conds: Sequence[Condition]) -> list[tuple[Condition, Condition, list[Difference]]]:
    """``(a, b, differences(a, b))`` for every pair of conditions in page order (a before b) that share an
    evaluated seed and step."""
    out = []
    for i, a in enumerate(conds):
        for b in conds[i + 1:]:
            ds = differences(a, b)
            if ds:
                out.append((a, b, ds))
    return out


def pairs(conds: Sequence[Condition]) -> list[tuple[Condition, Condition]]:
    """The pairs ``(a, b)`` of :func:`compared`."""
    return [(a, b) for a, b, _ in compared(conds)]


def fmt_difference(d: Difference) -> str:
    per = "/".join(f"{x:+d}" for x in d.per_seed)
    mark = {HIGHER: "**higher**", LOWER: "**lower**"}.get(d.verdict, d.verdict)
    return f"{d.diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}] ({per}) {mark}"


def table(conds: Sequence[Condition]) -> list[str]:
    """Markdown: a legend naming the conditions C1, C2, ..., then one row per compared pair (``b - a``) and one
    column per evaluation step; no lines when no pair shares an evaluated seed and step."""
    rows = compared(conds)
    if not rows:
        return []
    names = {c.label: f"C{i}" for i, c in enumerate(conds, 1)}
    steps = sorted({d.step for _, _, ds in rows for d in ds})
    head = ["b - a", *(f"step {st}" for st in steps)]
    lines = [f"- {names[c.label]}: {c.label}" for c in conds] + [""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, b, ds in rows:
        at = {d.step: d for d in ds}
        row = [f"{names[b.label]} - {names[a.label]}", *(fmt_difference(at[st]) if st in at else "-" for st in steps)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return lines
