"""One PNG per metric over training steps: a line per condition (mean across seeds) with a shaded min-max band
across seeds. Matplotlib Figures on the Agg canvas (no display, no pyplot); files are written to a temporary name and renamed."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from visual_dr3.fileio import atomic_path
from visual_dr3.report.runs import SUCCESS, Condition, band

#: metric -> (file stem, y-axis label)
PLOT_METRICS = {
    "dr3_dot": ("dr3_dot", "phi(s)·phi(s') (dr3_dot)"),
    "dr3_cos": ("dr3_cos", "cos(phi(s), phi(s')) (dr3_cos)"),
    "phi_norm": ("phi_norm", "||phi(s)|| of the encoder features (phi_norm)"),
    "pen_dr3_dot": ("pen_dr3_dot", "penultimate-layer dot product (pen_dr3_dot)"),
    "srank": ("srank", "effective rank of phi (srank)"),
    "q_mean": ("q_mean", "mean Q(s,a) (q_mean)"),
    "q_minus_mc": ("q_minus_mc", "Q on data actions - their discounted Monte-Carlo return (q_minus_mc)"),
    "critic_loss": ("critic_loss", "critic loss"),
    SUCCESS: ("success_rate", "evaluation success rate"),
}


def plot_metric(conds: Sequence[Condition], metric: str, path: Path, title: str) -> bool:
    """Write ``path`` (PNG) for ``metric``; False (and no file) when no run logged it."""
    bands = [(c, band(c, metric)) for c in conds]
    bands = [(c, b) for c, b in bands if b is not None]
    if not bands:
        return False
    # a Figure of its own (Agg canvas), not pyplot: no global backend to choose, nothing to close
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.subplots()
    for c, (steps, mean, lo, hi) in bands:
        n = len(c.runs)
        marker = "o" if metric == SUCCESS or len(steps) <= 3 else None
        (line,) = ax.plot(steps, mean, marker=marker, label=textwrap.fill(f"{c.label} (n={n})", 60))
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("training step")
    ax.set_ylabel(PLOT_METRICS[metric][1])
    ax.set_title(textwrap.fill(f"{title}: mean across seeds, band = min-max", 80), fontsize=9)
    if metric == SUCCESS:
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return True


def plot_all(conds: Sequence[Condition], out_dir: Path, title: str) -> dict[str, Path]:
    """Every metric of :data:`PLOT_METRICS` that some run logged -> ``{metric: png path}``."""
    out = {}
    for metric, (stem, _) in PLOT_METRICS.items():
        p = Path(out_dir) / f"{stem}.png"
        if plot_metric(conds, metric, p, title):
            out[metric] = p
    return out
