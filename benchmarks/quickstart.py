"""P5: wall time of `siked run examples/quickstart.yaml` in a fresh directory.

    python -m benchmarks p5

The baseline is the goal itself, 600 s: the quickstart must finish in ten minutes on 2 CPU cores.
The run goes to `<work>/quickstart` (emptied first) and its log to `<work>/quickstart.log`;
its iteration-1 student (`STUDENT`) is the trained student the sampling benchmarks use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import Measurement, ratio_met
from benchmarks.student import QUICKSTART, REPO

GOAL_SECONDS = 600
STUDENT = Path("quickstart") / "iter-001" / "train" / "model"  # under the work directory


def run(device: str, work: Path) -> list[Measurement]:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "quickstart.log"
    run_dir = work / "quickstart"
    shutil.rmtree(run_dir, ignore_errors=True)
    with log.open("w") as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "siked_runtime.cli", "run", str(QUICKSTART), "--dir", str(run_dir)],
                       cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True)
        seconds = time.perf_counter() - started
    report = json.loads((run_dir / "report.json").read_text())
    context = {"model": "SmolLM2-135M-Instruct", "device": device, "n": 1, "seconds": round(seconds, 1),
               "log": str(log), "best_iteration": report.get("best_iteration")}
    m = Measurement("P5", "quickstart wall time vs the 600 s goal", seconds, GOAL_SECONDS, "s", "<=1", False, context)
    m.met = ratio_met(m.ratio, "<=1")
    return [m]
