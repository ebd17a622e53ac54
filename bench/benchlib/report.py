"""Per-rep values, medians with min-max, ratios taken within each rep, markdown."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Results:
    """values[(scenario, metric)][target][rep] = number."""

    values: dict[tuple[str, str], dict[str, dict[int, float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(dict))
    )

    def put(self, scenario: str, metric: str, target: str, rep: int, value: float) -> None:
        self.values[(scenario, metric)][target][rep] = value

    def get(self, scenario: str, metric: str, target: str) -> dict[int, float]:
        return self.values.get((scenario, metric), {}).get(target, {})

    def ratios(self, scenario: str, metric: str, target: str, base: str) -> list[float]:
        """value(target) / value(base) in each rep where both were measured."""
        a, b = self.get(scenario, metric, target), self.get(scenario, metric, base)
        return [a[r] / b[r] for r in sorted(a) if r in b and b[r] and not math.isnan(a[r])]


def spread(values: list[float], fmt: str) -> str:
    """'median (min-max)', or the one value, or '-'."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(vals), fmt)}-{format(max(vals), fmt)})"


def verdict(ratios: list[float], goal: str) -> str:
    """'met' / 'missed' for a goal like '>=1.0' or '<=2', judged on the median ratio."""
    if not ratios or not goal:
        return ""
    med = statistics.median(ratios)
    op, limit = goal[:2], float(goal[2:])
    ok = med >= limit if op == ">=" else med <= limit
    return "met" if ok else "**missed**"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def number_format(value: float) -> str:
    """A fixed-point format that suits a value's size (for `spread`)."""
    if value >= 1000:
        return ",.0f"
    if value >= 100:
        return ".0f"
    if value >= 10:
        return ".1f"
    return ".2f"
