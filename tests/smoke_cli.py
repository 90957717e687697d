"""One `siked run examples/smoke.yaml` through the command line, shared by the tests that read it.

    run = smoke_cli_run()        # runs once per test process (about a minute on 2 cores)
    run.dir / "final" / "model", run.stderr, run.stdout

stdout and stderr are pipes, so the console is the one a Job's log gets (no TTY).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "examples" / "smoke.yaml"


class CliRun(NamedTuple):
    dir: Path
    returncode: int
    stdout: str
    stderr: str


@functools.cache
def smoke_cli_run() -> CliRun:
    root = Path(tempfile.mkdtemp(prefix="siked-smoke-cli-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    run_dir = root / "smoke"
    proc = subprocess.run([sys.executable, "-m", "siked_runtime.cli", "run", str(SMOKE), "--dir", str(run_dir)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    return CliRun(run_dir, proc.returncode, proc.stdout, proc.stderr)
