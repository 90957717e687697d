"""One measurement: a JSON line as it is taken, and a table of all of them at the end.

    m = Measurement("P3", "PoT programs verified/s", ours=9921, baseline=162, unit="programs/s",
                    goal=">=10", met=True, context={"n": 2000})
    emit(m, out_file)        # prints {"id": "P3", "ours": 9921, ..., "ratio": 61.2, ...}
    print(table([m]))
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def machine() -> str:
    """`cpu (2 cores, AMD EPYC)`, with `native bf16` where the CPU has it (bf16 training and inference
    run several times faster there, and `dtype: auto` generates in bf16), or the GPU's name."""
    import torch

    from siked_runtime.models import cpu_has_native_bf16

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = ", native bf16" if cpu_has_native_bf16() else ""
    return f"cpu ({os.cpu_count()} cores, {model}{bf16})"


@dataclass
class Measurement:
    id: str
    what: str
    ours: float
    baseline: float
    unit: str
    goal: str  # on the ratio ours / baseline, e.g. ">=3" or "<=0.6"
    met: bool
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("inf")

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "what": self.what, "ours": _round(self.ours), "baseline": _round(self.baseline),
                "unit": self.unit, "ratio": _round(self.ratio), "goal": self.goal, "met": self.met, **self.context}


def ratio_met(ratio: float, goal: str) -> bool:
    """Whether `ratio` meets a goal written as `>=X` or `<=X`."""
    if goal.startswith(">="):
        return ratio >= float(goal[2:])
    if goal.startswith("<="):
        return ratio <= float(goal[2:])
    raise ValueError(f"goal must start with >= or <=, got {goal!r}")


def _round(value: float) -> float:
    if not math.isfinite(value):
        return value
    return round(value, 3) if abs(value) < 10 else round(value, 1)


def emit(m: Measurement, out: Path | None = None) -> None:
    line = json.dumps(m.as_json())
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")


def table(measurements: list[Measurement]) -> str:
    """A Markdown table: one row per measurement."""
    rows = [["id", "what", "ours", "baseline", "unit", "ratio", "goal", "met"]]
    for m in measurements:
        rows.append([m.id, m.what, f"{_round(m.ours):,}", f"{_round(m.baseline):,}", m.unit,
                     f"{_round(m.ratio)}x", m.goal, "yes" if m.met else "NO"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
