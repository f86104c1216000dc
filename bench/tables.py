"""The speed table the benchmarks print: one row per scenario, its baseline and variant from the same run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    scenario: str
    model: str
    baseline: str
    variant: str
    speedup: float
    quality: str  # what else the row measured (output quality, batch sizes, ...)
    target: str
    meets_target: bool


def print_table(rows: list[Row], header: str, notes: str = "quality") -> None:
    """A Markdown table; `notes` names the column that holds Row.quality."""
    print(header)
    columns = ["scenario", "model", "baseline", "variant", "speedup", notes, "target", "met"]
    table = [[r.scenario, r.model, r.baseline, r.variant, f"{r.speedup:.2f}x", r.quality, r.target,
              "yes" if r.meets_target else "no"] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
