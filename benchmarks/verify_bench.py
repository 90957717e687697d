"""Throughput of the sandbox pool against one fresh interpreter per program.

    python benchmarks/verify_bench.py [--n 2000] [--baseline-n 200] [--workers N]

Both sides run the same kind of generated arithmetic PoT programs with the same
concurrency (one lane per worker) and check every answer. Ours runs every program in a
fresh child of a pre-imported template, with every isolation layer this machine offers
(`siked verify --explain-sandbox`). Rates depend on what else the machine is doing, so
both sides also report CPU seconds per program (this process, the templates and their
children). Prints both, the ratio, and one JSON line:
{"id": "P3", "ours": ..., "baseline": ..., "unit": "programs/s", "ratio": ..., "cpu_ms": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siked_runtime.verification import SandboxPool  # noqa: E402


def make_programs(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(program, expected answer) pairs in the shapes models write: straight-line, def solution(), loops."""
    rng = random.Random(seed)
    programs = []
    for i in range(n):
        a, b, c = rng.randint(2, 500), rng.randint(2, 50), rng.randint(1, 20)
        shape = i % 4
        if shape == 0:
            source = f"price = {a}\ncount = {b}\ndiscount = {c}\nanswer = price * count - discount\n"
            expected = a * b - c
        elif shape == 1:
            source = (f"def solution():\n    eggs = {a}\n    eaten = {c}\n    per_box = {b}\n"
                      f"    return (eggs - eaten) // per_box\n")
            expected = (a - c) // b
        elif shape == 2:
            source = f"total = 0\nfor day in range({b}):\n    total += {c}\nanswer = total + {a}\n"
            expected = b * c + a
        else:
            source = f"import math\nside = {b}\nanswer = math.floor(math.sqrt(side * side)) + {a} % {c}\n"
            expected = b + a % c
        programs.append((source, expected))
    return programs


def _cpu_seconds(pid: int) -> float:
    """A process's CPU time plus that of the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bench_pool(programs: list[tuple[str, int]], workers: int) -> tuple[float, float, dict]:
    """Programs/s, CPU ms per program, and the sandbox layers that were on."""
    with SandboxPool(size=workers) as pool:
        pool.run_many([p for p, _ in programs[:50]])  # warm-up: first-call thread start-up
        templates = pool.template_pids()
        cpu = _own_cpu() + sum(_cpu_seconds(pid) for pid in templates)
        start = time.perf_counter()
        results = pool.run_many([p for p, _ in programs])
        elapsed = time.perf_counter() - start
        cpu = _own_cpu() + sum(_cpu_seconds(pid) for pid in templates) - cpu
        layers = {name: on for name, (on, _) in pool.layers.items()}
    wrong = sum(r.value != str(expected) for r, (_, expected) in zip(results, programs))
    if wrong:
        raise SystemExit(f"sandbox pool: {wrong} wrong answers")
    return len(programs) / elapsed, 1000 * cpu / len(programs), layers


# The baseline wraps each program so its answer comes back on stdout, in an interpreter
# started the same way as the pool's workers (isolated, no site), without the limits.
_WRAPPER = (
    "import sys\nns = {}\nexec(compile(sys.stdin.read(), '<program>', 'exec'), ns)\n"
    "print(ns['answer'] if 'answer' in ns else ns['solution']())\n"
)


def _run_fresh(program: str) -> str:
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _WRAPPER], input=program,
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def bench_subprocess(programs: list[tuple[str, int]], workers: int) -> tuple[float, float]:
    """Programs/s and CPU ms per program."""
    cpu = _own_cpu()
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as lanes:
        outputs = list(lanes.map(_run_fresh, [p for p, _ in programs]))
    elapsed = time.perf_counter() - start
    cpu = _own_cpu() - cpu
    wrong = sum(out != str(expected) for out, (_, expected) in zip(outputs, programs))
    if wrong:
        raise SystemExit(f"subprocess baseline: {wrong} wrong answers")
    return len(programs) / elapsed, 1000 * cpu / len(programs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="programs for the warm pool")
    parser.add_argument("--baseline-n", type=int, default=200, help="programs for the per-program subprocess baseline")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    ours, ours_cpu, layers = bench_pool(make_programs(args.n), args.workers)
    baseline, baseline_cpu = bench_subprocess(make_programs(args.baseline_n, seed=1), args.workers)
    ratio = ours / baseline
    print(f"sandbox pool        : {ours:8.1f} programs/s, {ours_cpu:.2f} ms CPU each  "
          f"({args.n} programs, {args.workers} templates)")
    print(f"subprocess/program  : {baseline:8.1f} programs/s, {baseline_cpu:.2f} ms CPU each  "
          f"({args.baseline_n} programs, {args.workers} lanes)")
    print(f"speed-up            : {ratio:8.1f}x")
    print(f"layers on           : {', '.join(name for name, on in layers.items() if on)}")
    print(json.dumps({"id": "P3", "ours": round(ours, 1), "baseline": round(baseline, 1),
                      "unit": "programs/s", "ratio": round(ratio, 1),
                      "cpu_ms": {"ours": round(ours_cpu, 3), "baseline": round(baseline_cpu, 3)},
                      "layers": layers, "load": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
