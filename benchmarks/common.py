"""What every benchmark case shares: the machine, repeated timing (median and spread), result rows, the table.

A case returns a list of :class:`Row`: one figure each, with its unit, spread, target and whether the target
is met (``None`` when the row has no target or was not measured). :func:`format_table` prints them as one
table; :func:`machine_info` names the machine the figures come from.
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence


@dataclass
class Row:
    """One measured figure of one case."""

    case: str
    """Case name (``pipeline``, ``robomimic``, ``dr3``, ``memory``, ``rollouts``, ``datagen``, ``scaling``)."""
    measure: str
    """What was measured, in words (with its setting)."""
    value: Optional[float]
    """The figure (median over repetitions); None when the case was skipped."""
    unit: str = ""
    """Unit of ``value`` (``steps/s``, ``x``, ``MiB``, ...)."""
    spread: Optional[float] = None
    """(max - min) / median over the repetitions, as a fraction; None for single measurements."""
    target: str = ""
    """The target in words (``>= 0.95``); empty when the row is informative only."""
    met: Optional[bool] = None
    """Whether ``value`` meets ``target`` (None: no target, or not measured, or within noise)."""
    note: str = ""
    """Setting or reason (e.g. why the case was skipped)."""
    reps: int = 0
    """Number of timed repetitions behind ``value``."""
    samples: list = field(default_factory=list)
    """The repetitions' raw values (for the JSON output)."""
    noisy: bool = False
    """The repetitions' range is wider than the margin to the target: the table says "within noise"."""


@dataclass
class Timing:
    """Repeated measurements of one quantity."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative range over the repetitions."""
        m = self.median
        return (max(self.samples) - min(self.samples)) / m if m else 0.0


def judge(value: float, spread: Optional[float], target: Optional[float],
          lower_is_better: bool = False) -> tuple[str, Optional[bool], bool]:
    """(target in words, met, within noise) of ``value`` against ``target``. A figure whose relative spread
    is wider than its relative margin to the target (``|value - target| / value``) is within noise: neither
    met nor missed."""
    if target is None:
        return "", None, False
    tgt = f"{'<=' if lower_is_better else '>='} {target:g}"
    if spread is not None and value and spread > abs(value - target) / abs(value):
        return tgt, None, True
    return tgt, (value <= target if lower_is_better else value >= target), False


def ratio_row(case: str, measure: str, num: Timing, den: Timing, target: Optional[float] = None,
              lower_is_better: bool = False, note: str = "") -> Row:
    """A row of median(num) / median(den), with the spread of the two combined (relative spreads add)."""
    value = num.median / den.median
    spread = num.spread + den.spread
    tgt, met, noisy = judge(value, spread, target, lower_is_better)
    return Row(case, measure, value, "x", spread, tgt, met, note, len(num.samples), noisy=noisy)


def target_row(case: str, measure: str, t: Timing, target: float, lower_is_better: bool = False,
               unit: str = "x", note: str = "") -> Row:
    """A row of median(t) against ``target`` (within noise when its spread is wider than the margin)."""
    tgt, met, noisy = judge(t.median, t.spread, target, lower_is_better)
    return Row(case, measure, t.median, unit, t.spread, tgt, met, note, len(t.samples), samples=t.samples,
               noisy=noisy)


def timing_row(case: str, measure: str, t: Timing, unit: str, note: str = "") -> Row:
    return Row(case, measure, t.median, unit, t.spread, note=note, reps=len(t.samples), samples=t.samples)


def skipped(case: str, measure: str, why: str) -> Row:
    return Row(case, measure, None, note=f"skipped: {why}")


def cuda_sync_for(device) -> Callable[[], None]:
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def machine_info(device: str) -> dict:
    """CPU model, cores, memory, GPU, library versions: what the figures depend on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else None
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1) if mem_gib else None,
            "gpu": gpu, "device": device, "torch": torch.__version__, "python": platform.python_version(),
            "load_average_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    if gpu:
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["gpus"] = torch.cuda.device_count()
    return info


def fmt_value(v: Optional[float], unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("x",):
        return f"{v:.2f}x"
    if abs(v) >= 1000:
        return f"{v:,.0f} {unit}".strip()
    if abs(v) >= 10:
        return f"{v:.1f} {unit}".strip()
    return f"{v:.3g} {unit}".strip()


def format_table(rows: Sequence[Row]) -> str:
    """The rows as one markdown table (printed by the suite and pasted into BENCHMARKS.md)."""
    head = ["case", "measure", "value", "spread", "target", "met", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        met = "within noise" if r.noisy else ("" if r.met is None else ("yes" if r.met else "NO"))
        spread = "" if r.spread is None else f"{100 * r.spread:.0f}%"
        cells = [r.case, r.measure, fmt_value(r.value, r.unit), spread, r.target, met, r.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def rows_to_json(rows: Sequence[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
