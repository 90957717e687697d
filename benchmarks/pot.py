"""P3: PoT programs verified/s — the sandbox pool (a fresh locked-down child per program) against one subprocess per program.

    python -m benchmarks p3 [--quick]      (also: python benchmarks/verify_bench.py)

The measurement itself lives in `verify_bench.py`; this wraps it as a `Measurement`.
"""

from __future__ import annotations

import os
import time

from benchmarks.report import Measurement
from benchmarks.verify_bench import bench_pool, bench_subprocess, make_programs

GOAL = ">=10"
MIN_RATE = 500  # programs/s, the absolute goal next to the ratio


def run(device: str, quick: bool, n: int | None = None, baseline_n: int | None = None) -> list[Measurement]:
    n = n or (2000 if quick else 10000)
    baseline_n = baseline_n or (100 if quick else 400)
    workers = os.cpu_count() or 1
    started = time.perf_counter()
    load = os.getloadavg()[0]
    ours, ours_cpu, layers = bench_pool(make_programs(n), workers)
    baseline, baseline_cpu = bench_subprocess(make_programs(baseline_n, seed=1), workers)
    m = Measurement("P3", "PoT programs verified/s, sandbox pool vs subprocess per program", ours, baseline,
                    "programs/s", f"{GOAL} and ours>={MIN_RATE}", ours / baseline >= 10 and ours >= MIN_RATE,
                    {"device": device, "n": n, "baseline_n": baseline_n, "workers": workers,
                     "cpu_ms_per_program": {"ours": round(ours_cpu, 3), "baseline": round(baseline_cpu, 3)},
                     "layers_on": [name for name, on in layers.items() if on], "load_at_start": round(load, 2),
                     "seconds": round(time.perf_counter() - started, 2)})
    return [m]
