"""The operator under load: many DistillationRuns whose stage Jobs complete instantly.

    python benchmarks/operator_bench.py [--runs 100] [--poll-interval 1.0] [--timeout 600] [--out FILE]

`siked-operator` runs as its own process against the Kubernetes API emulator of
tests/k8s_tools.py (kmock over HTTP); a simulated kubelet completes every Job
the moment it starts, after publishing a plausible stage manifest to file://
storage. Each run is the smoke profile's graph (8 stages, 6 of them in a chain).

Prints the stage-to-stage latency — from a Job reported complete to its
successor Job created — as p50/p90/p99/max, the latency from a run's creation
to its first Job, the operator's startup (process start to its first Job), the
API requests per second the emulator served, the operator's CPU per stage
transition, the wall time, and the operator's peak RSS (VmHWM), then one JSON
line (appended to --out, e.g. benchmarks/results/operator.jsonl). Goals: p99 < 2 s,
peak RSS < 250 MB.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import k8s_tools as kt  # noqa: E402

# Successor of each stage in the smoke graph's chain (iteration stages run one after another).
CHAIN = [("teacher", "it0-train"), ("it0-train", "it0-eval"), ("it0-eval", "it1-sample"),
         ("it1-sample", "it1-train"), ("it1-train", "it1-eval"), ("it1-eval", "export")]
STAGES_PER_RUN = 8


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def reconcile_stats(port: int) -> tuple[int, float]:
    """Full reconcile passes and their total seconds, from the operator's own histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("siked_reconcile_duration_seconds_")}
    return int(values["siked_reconcile_duration_seconds_count"]), values["siked_reconcile_duration_seconds_sum"]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="the operator's --poll-interval")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, help="append the JSON line to this file")
    args = parser.parse_args()

    smoke = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="siked-operator-bench-"))
    (work / "node").mkdir()
    with kt.cluster(work) as (server, api, kubeconfig):
        kubelet = kt.SimulatedKubelet(api, work / "node", simulate=lambda job: kt.Simulated(seconds=0))
        metrics_port = kt.free_port()
        operator = kt.OperatorProcess(kubeconfig, work, args=[
            "--storage-uri", (work / "runs").as_uri(), "--poll-interval", str(args.poll_interval),
            "--metrics-port", str(metrics_port), "--liveness-port", "0",
        ])
        api.create_run({**copy.deepcopy(smoke), "metadata": {"name": "warm-up"}})
        with kubelet, operator:
            launched = time.monotonic()
            kt.wait_for(lambda: ("default", "warm-up-teacher") in kubelet.finished_at, 60, "the first Job")
            startup = time.monotonic() - launched  # process start to its first Job done
            kt.wait_for(lambda: (api.run("warm-up").get("status") or {}).get("phase") == "Succeeded", 60, "warm-up")
            cpu_before = cpu_seconds(operator.process.pid)
            requests_before = sum(n for _, _, n in api.get(kt.COUNTS))
            started = time.monotonic()
            for i in range(args.runs):
                manifest = copy.deepcopy(smoke)
                manifest["metadata"]["name"] = f"bench-{i:03d}"
                api.create_run(manifest)
            created_all = time.monotonic() - started

            def finished() -> int:
                # The last stage's Jobs first (no API calls, so waiting adds no load), then the runs' status.
                exports = sum(1 for (_, name) in list(kubelet.finished_at)
                              if name.startswith("bench-") and name.endswith("-export"))
                if exports < args.runs:
                    return 0
                return sum(1 for r in api.runs() if r["metadata"]["name"].startswith("bench-")
                           and (r.get("status") or {}).get("phase") == "Succeeded")

            deadline = time.monotonic() + args.timeout
            while (done := finished()) < args.runs:
                if time.monotonic() > deadline:
                    print(f"timed out: {done}/{args.runs} runs succeeded", file=sys.stderr)
                    print(operator.logs()[-3000:], file=sys.stderr)
                    return 1
                time.sleep(0.2)
            wall = time.monotonic() - started
            rss = peak_rss_mb(operator.process.pid)
            operator_cpu = cpu_seconds(operator.process.pid) - cpu_before
            requests = sum(n for _, _, n in api.get(kt.COUNTS)) - requests_before
            emulator_cpu = cpu_seconds(server.pid)
            passes, pass_seconds = reconcile_stats(metrics_port)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            kubelet_cpu = usage.ru_utime + usage.ru_stime

        created = server.created_at()
        latencies, first_job = [], []
        for i in range(args.runs):
            run = f"bench-{i:03d}"
            for before, after in CHAIN:
                done_at = kubelet.finished_at[("default", f"{run}-{before}")]
                [created_next] = created[("jobs", "default", f"{run}-{after}")]
                latencies.append(created_next - done_at)
            run_created = created[("distillationruns", "default", run)][0]
            first_job.append(created[("jobs", "default", f"{run}-teacher")][0] - run_created)
        duplicates = sum(len(times) - 1 for (plural, _, _), times in created.items() if plural == "jobs")

    result = {
        "runs": args.runs,
        "stages": args.runs * STAGES_PER_RUN,
        "poll_interval_s": args.poll_interval,
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p90_s": round(percentile(latencies, 90), 3),
        "latency_p99_s": round(percentile(latencies, 99), 3),
        "latency_max_s": round(max(latencies), 3),
        "first_job_p50_s": round(statistics.median(first_job), 3),
        "first_job_p99_s": round(percentile(first_job, 99), 3),
        "create_all_runs_s": round(created_all, 2),
        "startup_to_first_job_s": round(startup, 2),
        "api_requests_per_s": round(requests / wall, 1),
        "operator_cpu_ms_per_transition": round(1000 * operator_cpu / (args.runs * STAGES_PER_RUN), 2),
        "wall_s": round(wall, 1),
        "operator_peak_rss_mb": round(rss, 1),
        "operator_cpu_s": round(operator_cpu, 1),
        "reconcile_passes": passes,
        "reconcile_mean_ms": round(1000 * pass_seconds / max(passes, 1), 2),
        "emulator_cpu_s": round(emulator_cpu, 1),
        "kubelet_cpu_s": round(kubelet_cpu, 1),
        "duplicate_jobs": duplicates,
    }
    print(f"{args.runs} runs, {len(latencies)} stage transitions, poll interval {args.poll_interval}s, "
          f"all done in {result['wall_s']}s")
    print(f"stage-to-stage latency: p50 {result['latency_p50_s']}s  p90 {result['latency_p90_s']}s  "
          f"p99 {result['latency_p99_s']}s  max {result['latency_max_s']}s   (goal: p99 < 2s)")
    print(f"run created -> first Job: p50 {result['first_job_p50_s']}s  p99 {result['first_job_p99_s']}s; operator "
          f"start -> first Job done: {result['startup_to_first_job_s']}s")
    print(f"API requests: {result['api_requests_per_s']}/s; operator CPU per stage: "
          f"{result['operator_cpu_ms_per_transition']} ms")
    print(f"operator peak RSS: {result['operator_peak_rss_mb']} MB   (goal: < 250 MB); duplicate Jobs: {duplicates}")
    print(f"full reconcile passes: {passes} (mean {result['reconcile_mean_ms']} ms, in the operator's worker threads)")
    print(f"CPU: operator {result['operator_cpu_s']}s, API emulator {result['emulator_cpu_s']}s, "
          f"simulated kubelet {result['kubelet_cpu_s']}s (machine: {os.cpu_count()} CPUs)")
    line = json.dumps({"id": "operator", **result})
    print(line)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")
    return 0 if result["latency_p99_s"] < 2 and result["operator_peak_rss_mb"] < 250 and duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
