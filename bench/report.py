"""Figures, their targets, the printed table and the JSON record of a benchmark run."""

from __future__ import annotations

import json
import math
import operator
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le,
                                                           "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """A threshold on the Offload figure (``of="value"``), on offload / baseline (``"ratio"``), or on
    offload - baseline (``"difference"``)."""

    of: str
    comparison: str
    threshold: float

    def met(self, figure: Figure) -> bool:
        values = {"value": figure.offload, "ratio": figure.ratio, "difference": figure.offload - figure.baseline}
        return _COMPARISONS[self.comparison](values[self.of], self.threshold)

    def describe(self) -> str:
        prefix = {"value": "", "ratio": "ratio ", "difference": "baseline + "}[self.of]
        if self.of == "difference":
            return f"{self.comparison} {prefix}{format_number(self.threshold)}"
        return f"{prefix}{self.comparison} {format_number(self.threshold)}"


def at_least(value: float) -> Target:
    return Target("value", ">=", value)


def at_most(value: float) -> Target:
    return Target("value", "<=", value)


def below(value: float) -> Target:
    return Target("value", "<", value)


def at_most_above_baseline(value: float) -> Target:
    return Target("difference", "<=", value)


def ratio_at_least(value: float) -> Target:
    return Target("ratio", ">=", value)


@dataclass
class Figure:
    """One measured figure of Offload and the same figure of its baseline, in the same unit."""

    name: str
    unit: str
    offload: float
    baseline: float
    baseline_name: str
    target: Target | None = None
    # Each run's (offload, baseline) pair when the figure was measured more than once.
    runs: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.offload / self.baseline if self.baseline else float("nan")

    def met(self, judged: bool) -> bool | None:
        if not judged or self.target is None:
            return None
        return self.target.met(self)


@dataclass
class Skipped:
    """A benchmark that did not run, and why."""

    name: str
    reason: str


def median_figures(runs: list[list[Figure]]) -> list[Figure]:
    """Merge repeated runs of one benchmark: each figure gets the medians of its Offload and baseline values."""
    merged: list[Figure] = []
    for figures in zip(*runs):
        first = figures[0]
        pairs = [(figure.offload, figure.baseline) for figure in figures]
        merged.append(Figure(first.name, first.unit, statistics.median(pair[0] for pair in pairs),
                             statistics.median(pair[1] for pair in pairs), first.baseline_name, first.target,
                             pairs if len(pairs) > 1 else []))
    return merged


def format_number(value: float) -> str:
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "load_average_at_start": load}


def print_table(figures: list[Figure], skipped: list[Skipped], judged: bool, settings: dict[str, Any],
                info: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            # A log or a pipe gets the whole table rather than rich's 80 columns.
            console = Console(width=160)
    load = info["load_average_at_start"]
    load_text = f", load average {load[0]:.2f} at start" if load else ""
    console.print(f"machine: {info['cpu_count']} CPUs, {info['platform']}, {info['python']}{load_text}")
    console.print("settings: " + ", ".join(f"{key} {value}" for key, value in settings.items()))
    table = Table(show_lines=False)
    for column, justify in (("figure", "left"), ("Offload", "right"), ("baseline", "right"), ("ratio", "right"),
                            ("target", "left"), ("met", "center")):
        table.add_column(column, justify=justify)
    for figure in figures:
        met = figure.met(judged)
        if met is None:
            met_text = "-"
        elif met:
            met_text = "yes"
        else:
            met_text = "[red]no[/red]"
        table.add_row(f"{figure.name}, {figure.unit}", format_number(figure.offload),
                      f"{format_number(figure.baseline)} ({figure.baseline_name})", f"{figure.ratio:.3g}",
                      figure.target.describe() if figure.target else "", met_text)
    console.print(table)
    for skip in skipped:
        console.print(f"skipped {skip.name}: {skip.reason}")
    if not judged:
        console.print("targets not judged in --quick mode")


def write_json(path: Path, figures: list[Figure], skipped: list[Skipped], judged: bool,
               settings: dict[str, Any], info: dict[str, Any], elapsed_s: float) -> None:
    document = {
        "machine": info,
        "settings": settings,
        "figures": [{"name": figure.name, "unit": figure.unit, "offload": figure.offload,
                     "baseline": figure.baseline, "baseline_name": figure.baseline_name, "ratio": _finite(figure.ratio),
                     "target": figure.target.describe() if figure.target else None, "met": figure.met(judged),
                     "runs": figure.runs}
                    for figure in figures],
        "skipped": [{"name": skip.name, "reason": skip.reason} for skip in skipped],
        "elapsed_s": elapsed_s,
    }
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
