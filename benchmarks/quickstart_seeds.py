"""The quickstart for several seeds: does it show SIKeD's improvement and routing shift every time?

    python -m benchmarks.quickstart_seeds --seeds 0 1 2 --work runs/quickstart-seeds \
        --out benchmarks/results/quickstart-seeds

Runs `examples/quickstart.yaml` once per seed (spec.seed patched; nothing else), each in
`<work>/s<seed>` (rerun to resume: finished runs are kept), and writes `quickstart-seeds.json`,
`quickstart-seeds.md` and `quickstart-seeds.png` to `--out`: per seed, validation and test
accuracy at iteration 0 and at the last iteration with the difference's 95% interval (paired
bootstrap over the test questions), the student's strategy use per family at both iterations,
and each run's wall time (the sum of its stages' durations).

Routing: a student answers 90 separate pilot questions (synthetic, seed 9, the train
families) greedily with each strategy's tag forced, as the experiment's pilot does; the
strategies with the best accuracy in a family are that family's best. The routing share is
the share of test questions whose own (greedy) strategy is one of its family's best, at
iteration 0 and at the last iteration, with the paired bootstrap interval of the change. It is
measured against two pilots: the last student's (which strategy the trained student is best
at) and iteration 0's (the experiment's definition: which strategy the student that samples
the self-generated data is best at). The forced-tag tables are kept in
`<work>/s<seed>/routing-pilot-<iteration>.json` (made after the run's wall time).

Reference (unless `--no-reference`): `combined`, the same run with mixing policy `teacher`,
branches from each seed's iteration 0 (its teacher, train[0] and eval[0] stages, linked as the
experiment's arms are) in `<work>/s<seed>-combined` and trains iteration 1's steps on the teacher's
rows only. SIKeD − combined at the last iteration, paired over the same questions, per seed and
pooled over seeds: whether the quickstart's gain is self-guidance or just more steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.report import machine
from benchmarks.student import QUICKSTART
from siked_runtime import pilot
from siked_runtime.experiment import link_iteration0, merge, own_seconds
from siked_runtime.graph import EVAL, TRAIN, VALIDATION, StageKey
from siked_runtime.local_runner import run_local
from siked_runtime.report import png, pyplot
from siked_runtime.scoring import strategy_shares
from siked_runtime.spec import parse_manifest
from siked_runtime.stages.common import local_model
from siked_runtime.stages.data import eval_sets
from siked_runtime.stats import paired_bootstrap
from siked_runtime.storage import list_manifests, open_store
from siked_runtime.strategies import STRATEGIES
from siked_runtime.synthetic import generate

PILOT_QUESTIONS, PILOT_SEED = 90, 9


def predictions(store, iteration: int, name: str) -> dict[str, dict]:
    rows = store.read_jsonl(f"{StageKey(EVAL, iteration).prefix}/predictions-{name}.jsonl.gz")
    return {r["id"]: r for r in rows}


def best_strategies(run, run_dir: Path, iteration: int) -> dict[str, dict]:
    """{family: {"best": [strategies], "accuracy": {strategy: acc}, "n"}} from iteration's student, tags forced."""
    saved = run_dir / f"routing-pilot-{iteration}.json"
    if not saved.exists():
        records = generate(PILOT_QUESTIONS, PILOT_SEED, families=run.spec.datasets.train.synthetic.families)
        model = local_model(open_store(str(run_dir)), StageKey(TRAIN, iteration).prefix)
        table = pilot.tabulate(pilot.forced_rows(run.spec, model, records, list(run.spec.strategies)))
        saved.write_text(json.dumps({"iteration": iteration, "questions": len(records), "seed": PILOT_SEED,
                                     "table": table}, indent=1))
    table = json.loads(saved.read_text())["table"]
    out = {}
    for family, cells in table.items():
        top = max(c["accuracy"] for c in cells.values())
        out[family] = {"best": [s for s in run.spec.strategies if cells[s]["accuracy"] == top],
                       "accuracy": {s: cells[s]["accuracy"] for s in run.spec.strategies},
                       "n": cells[run.spec.strategies[0]]["n"]}
    return out


def routing(best: dict[str, dict], family: dict[str, str], first: dict, final: dict, seed: int) -> dict:
    """Routing share against `best` at iteration 0 and last, with the paired interval of the change."""
    ids = sorted(first)
    routed = {when: np.array([p[q].get("strategy") in best[family[q]]["best"] for q in ids], dtype=float)
              for when, p in (("iteration0", first), ("final", final))}
    return {"best": best, "iteration0": float(routed["iteration0"].mean()), "final": float(routed["final"].mean()),
            "change": paired_bootstrap(routed["final"], routed["iteration0"], seed=seed)}


def correct(rows: dict[str, dict], ids: list[str]) -> np.ndarray:
    """1.0 where the question's prediction is correct, in the order of `ids`."""
    return np.array([rows[q]["verdict"] == "correct" for q in ids], dtype=float)


def seed_result(run, run_dir: Path, seconds: float | None, where: str | None) -> dict:
    store = open_store(str(run_dir))
    manifests = list_manifests(store)
    report = json.loads((run_dir / "report.json").read_text())
    last = report["iterations"][-1]["iteration"]
    families = {r["id"]: r["meta"]["family"] for records in eval_sets(run.spec).values() for r in records}
    out = {"seed": run.spec.seed, "last_iteration": last, "sets": {}, "families": {},
           "stage_seconds": round(sum(m.get("duration_seconds") or 0.0 for m in manifests.values()), 1),
           "wall_seconds": seconds, "machine": where,
           "self_rows": [it["self_rows"] for it in report["iterations"]]}
    for name in eval_sets(run.spec):
        first, final = predictions(store, 0, name), predictions(store, last, name)
        ids = sorted(first)
        a, b = correct(final, ids), correct(first, ids)
        out["sets"][name] = {"n": len(ids), "iteration0": float(b.mean()), "final": float(a.mean()),
                             "gain": paired_bootstrap(a, b, seed=run.spec.seed)}
        if name == VALIDATION or "routing" in out:
            continue  # routing and the family table: the first test set only (the pilots are per run, not per set)
        out["routing"] = {"set": name, **routing(best_strategies(run, run_dir, last), families, first, final,
                                                 run.spec.seed)}
        out["routing_iteration0"] = {"set": name, **routing(best_strategies(run, run_dir, 0), families, first,
                                                            final, run.spec.seed)}
        for family in sorted({families[q] for q in ids}):
            mine = [q for q in ids if families[q] == family]
            out["families"][family] = {
                when: {"accuracy": sum(p[q]["verdict"] == "correct" for q in mine) / len(mine),
                       **strategy_shares(p[q] for q in mine)}
                for when, p in (("iteration0", first), ("final", final))} | {"n": len(mine)}
    return out


def against_reference(run, run_dir: Path, ref_dir: Path, last: int) -> dict:
    """SIKeD's last iteration against combined's, per eval set, on the same questions."""
    mine, ref = open_store(str(run_dir)), open_store(str(ref_dir))
    out = {"own_stage_seconds": round(own_seconds(list_manifests(ref)), 1), "sets": {}}
    for name in eval_sets(run.spec):
        ours, theirs = predictions(mine, last, name), predictions(ref, last, name)
        ids = sorted(ours)
        assert ids == sorted(theirs), f"{name}: the two runs scored different questions"
        a, b = correct(ours, ids), correct(theirs, ids)
        out["sets"][name] = {"n": len(ids), "siked": float(a.mean()), "combined": float(b.mean()),
                             "siked_correct": a.astype(int).tolist(), "combined_correct": b.astype(int).tolist(),
                             "diff": paired_bootstrap(a, b, seed=run.spec.seed),
                             "combined_strategies": strategy_shares(theirs.values())}
    return out


def pooled(results: list[dict], name: str) -> dict | None:
    """SIKeD − combined on one set, paired bootstrap over seeds × questions."""
    rows = [r["combined"]["sets"][name] for r in results if name in r.get("combined", {}).get("sets", {})]
    if len(rows) < 2 or len({row["n"] for row in rows}) != 1:
        return None
    return paired_bootstrap(np.array([row["siked_correct"] for row in rows]),
                            np.array([row["combined_correct"] for row in rows]), seed=0)


def render(results: list[dict]) -> str:
    lines = ["# Quickstart, several seeds", "",
             "`examples/quickstart.yaml` with only spec.seed changed. Gain: last iteration − iteration 0 on the "
             "same questions, paired bootstrap 95% interval. Machine: "
             + ", ".join(sorted({str(r.get("machine") or "not recorded") for r in results})) + ".", "",
             "| seed | set | n | iteration 0 | last | gain [95% CI] | wall s | stage s |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, s in r["sets"].items():
            g = s["gain"]
            lines.append(f"| {r['seed']} | {name} | {s['n']} | {s['iteration0']:.3f} | {s['final']:.3f} | "
                         f"{g['diff']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}] | "
                         f"{r['wall_seconds'] if r['wall_seconds'] is not None else '–'} | {r['stage_seconds']} |")
    lines += ["", "Per family (test set): accuracy and the student's cot / l2m / pot shares, iteration 0 → last.", "",
              "| seed | family | n | accuracy | cot | l2m | pot |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for family, f in r["families"].items():
            a, b = f["iteration0"], f["final"]
            lines.append(f"| {r['seed']} | {family} | {f['n']} | {a['accuracy']:.2f} → {b['accuracy']:.2f} | "
                         + " | ".join(f"{a[s]:.2f} → {b[s]:.2f}" for s in STRATEGIES) + " |")
    if any("combined" in r for r in results):
        lines += ["", "SIKeD against `combined` (iteration 0 continued on the teacher's rows only, the same steps; "
                  "paired over the same questions, 95% interval; pooled: paired bootstrap over seeds × questions). "
                  "Combined's own cot / l2m / pot shares on the set.", "",
                  "| seed | set | n | combined | SIKeD | SIKeD − combined [95% CI] | p | combined cot / l2m / pot "
                  "| combined's own stages s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in results:
            for name, c in r.get("combined", {}).get("sets", {}).items():
                d = c["diff"]
                lines.append(f"| {r['seed']} | {name} | {c['n']} | {c['combined']:.3f} | {c['siked']:.3f} | "
                             f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | {d['p']:.3f} | "
                             + " / ".join(f"{c['combined_strategies'][s]:.2f}" for s in STRATEGIES)
                             + f" | {r['combined']['own_stage_seconds']} |")
        for name in results[0].get("combined", {}).get("sets", {}):
            d = pooled(results, name)
            if d is not None:
                lines.append(f"| pooled | {name} | {len(results)} × {results[0]['combined']['sets'][name]['n']} | "
                             f"| | {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | {d['p']:.3f} | | |")
    for key, whose in (("routing", "the last student's"), ("routing_iteration0", "iteration 0's")):
        lines += ["", f"Routing against {whose} pilot: each family's best strategies from {whose} forced-tag "
                  f"accuracy on {PILOT_QUESTIONS} separate pilot questions (seed {PILOT_SEED}); routing share = test "
                  "questions whose own strategy is one of its family's best, iteration 0 → last, paired bootstrap "
                  "95% interval.", "",
                  "| seed | forced cot / l2m / pot per family (best) | routing share | change [95% CI] |",
                  "|---|---|---|---|"]
        for r in results:
            if key not in r:
                continue
            g = r[key]
            cells = "; ".join(f"{f} " + " / ".join(f"{b['accuracy'][s]:.2f}" for s in STRATEGIES)
                              + f" ({', '.join(b['best'])})" for f, b in g["best"].items())
            c = g["change"]
            lines.append(f"| {r['seed']} | {cells} | {g['iteration0']:.2f} → {g['final']:.2f} | "
                         f"{c['diff']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] |")
    return "\n".join(lines + ["", "![quickstart seeds](quickstart-seeds.png)", ""])


def plot(results: list[dict]) -> bytes:
    fig, ax = pyplot().subplots(figsize=(6.4, 3.8))
    for k, r in enumerate(results):
        for j, (name, s) in enumerate(r["sets"].items()):
            ax.plot([0, r["last_iteration"]], [s["iteration0"], s["final"]], "o-" if j else "o--", color=f"C{k}",
                    label=f"seed {r['seed']} {name}")
    ax.set(xlabel="iteration", ylabel="accuracy", ylim=(0, 1), title="Quickstart: iteration 0 → last, per seed")
    ax.legend(fontsize=7)
    return png(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("runs/quickstart-seeds"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quickstart-seeds"))
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the combined-distillation reference (iteration 0 continued on teacher rows)")
    args = parser.parse_args(argv)
    base = yaml.safe_load(QUICKSTART.read_text())
    results = []
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "quickstart-seeds.json"
    before = {r["seed"]: r for r in json.loads(saved.read_text())} if saved.exists() else {}
    for seed in args.seeds:
        run = parse_manifest({**base, "spec": {**base["spec"], "seed": seed}}, f"quickstart seed {seed}")
        run_dir = args.work / f"s{seed}"
        fresh = not (run_dir / "report.json").exists()
        started = time.perf_counter()
        run_local(run, run_dir)
        # Wall time and machine only for a run made in one go; a resumed one keeps what it had.
        prior = before.get(seed, {})
        seconds = round(time.perf_counter() - started, 1) if fresh else prior.get("wall_seconds")
        where = machine() if fresh else prior.get("machine")
        result = seed_result(run, run_dir, seconds, where)
        if args.reference:
            spec = merge(base["spec"], {"seed": seed, "mixing": {"policy": "teacher"}})
            reference = parse_manifest({**base, "spec": spec}, f"quickstart seed {seed}, combined")
            ref_dir = args.work / f"s{seed}-combined"
            link_iteration0(run_dir, ref_dir)
            run_local(reference, ref_dir)
            result["combined"] = against_reference(run, run_dir, ref_dir, result["last_iteration"])
        results.append(result)
        saved.write_text(json.dumps(results, indent=1))
        (args.out / "quickstart-seeds.md").write_text(render(results))
        (args.out / "quickstart-seeds.png").write_bytes(plot(results))


if __name__ == "__main__":
    main()
