"""What the benchmarks share: the speed table they print (one row per scenario, its baseline and variant from the same
run) and their scratch directories, which leave nothing behind."""

from __future__ import annotations

import atexit
import shutil
from dataclasses import dataclass
from pathlib import Path

from shell.process import owned_temp_dir


def scratch_dir(path: str | Path | None, prefix: str) -> Path:
    """`path` if given (kept, so built models are reused), else a new temporary directory removed when the script
    exits (shell.process.owned_temp_dir: a killed run's is removed by the next)."""
    if path:
        return Path(path)
    directory = Path(owned_temp_dir(prefix))
    atexit.register(shutil.rmtree, directory, True)
    return directory


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
