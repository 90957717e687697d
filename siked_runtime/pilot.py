"""The pilot of an experiment: with which strategy does a trained student do best, per family?

    siked experiment examples/experiment.yaml --budget medium --pilot

It evaluates one model (the experiment's shared iteration 0 of its first seed) greedily on a
pilot set drawn apart from every other set, once per strategy with that strategy's tag
forced (prefilled as the start of the answer), and tabulates accuracy per family × strategy
with counts. Strategy choice can only matter when strategies win on different families, so
the experiment proceeds only when the gate passes: at least two families whose best and
worst strategies are at least `min_gap` apart, in opposite directions (strategy s beats t by
≥ min_gap on one family, and t beats s by ≥ min_gap on another).

Beside accuracy, each cell counts what the answers state in writing (`claims.py`): false
arithmetic and false comparisons, and the wrong answers that hold one. When text loses to a
program, this says whether it lost where Python does the work (a sum, the comparison that
picks a rule's case) or in choosing which quantities to combine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from siked_runtime.claims import markdown_cells, tally
from siked_runtime.spec import DistillationSpec
from siked_runtime.stages.common import log
from siked_runtime.strategies import tag


def family_of(record: dict) -> str:
    """A record's synthetic family; records of other datasets form one group."""
    return (record.get("meta") or {}).get("family") or "all"


def forced_rows(spec: DistillationSpec, model_path, records: list[dict], strategies: list[str]) -> list[dict]:
    """Greedy answers with each strategy's tag prefilled, verified: {id, family, forced, verdict, …}."""
    from siked_runtime.stages.generation import StudentGenerator, evaluation_dtype
    from siked_runtime.stages.verification import verify_rows

    rows: list[dict] = []
    with StudentGenerator(spec, model_path, spec.evaluation.batch_size, dtype=evaluation_dtype(spec)) as gen:
        for strategy in strategies:
            completions = gen.generate([r["question"] for r in records], n=1, temperature=0.0,
                                       max_new_tokens=spec.evaluation.max_new_tokens, what=f"pilot [{strategy}]",
                                       prefill=tag(strategy) + "\n")
            batch = [{"id": r["id"], "answer": r["answer"], "completion": c[0], "family": family_of(r),
                      "forced": strategy} for r, c in zip(records, completions)]
            verified = verify_rows(batch, f"pilot [{strategy}] verify")
            correct = sum(r["verdict"] == "correct" for r in verified)
            log(f"pilot [{strategy}]: {correct}/{len(verified)} correct")
            rows += verified
    return rows


def tabulate(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """{family: {strategy: {"correct", "n", "accuracy", "claims"}}} from verified forced rows.

    `claims` counts what the answers state in writing (`claims.tally`): arithmetic and comparisons
    checked and false, and how many wrong answers hold a false one."""
    cells: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        cells.setdefault(row["family"], {}).setdefault(row["forced"], []).append(row)
    table: dict[str, dict[str, dict]] = {}
    for family, by_strategy in cells.items():
        for strategy, mine in by_strategy.items():
            correct = sum(r["verdict"] == "correct" for r in mine)
            table.setdefault(family, {})[strategy] = {"correct": correct, "n": len(mine),
                                                      "accuracy": correct / len(mine), "claims": tally(mine)}
    return table


@dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str
    best: dict[str, str]          # family → its best strategy in the pilot
    gaps: dict[str, float]        # family → best − worst accuracy
    pair: tuple[str, str, str, str] | None = None   # (family, family', strategy s, strategy t) that passed


def gate(table: dict[str, dict[str, dict]], min_gap: float = 0.15) -> Gate:
    """Whether strategy choice matters on these families (see the module docstring)."""
    acc = {f: {s: c["accuracy"] for s, c in cells.items()} for f, cells in table.items()}
    best = {f: max(a, key=lambda s: (a[s], s)) for f, a in acc.items() if a}
    gaps = {f: max(a.values()) - min(a.values()) for f, a in acc.items() if a}
    for f in sorted(acc):
        for g in sorted(acc):
            if f == g:
                continue
            for s in acc[f]:
                for t in acc[f]:
                    if s == t or s not in acc[g] or t not in acc[g]:
                        continue
                    if acc[f][s] - acc[f][t] >= min_gap - 1e-12 and acc[g][t] - acc[g][s] >= min_gap - 1e-12:
                        reason = (f"{s} beats {t} by {acc[f][s] - acc[f][t]:.2f} on {f}, and {t} beats {s} by "
                                  f"{acc[g][t] - acc[g][s]:.2f} on {g} (gate: {min_gap:.2f} each way)")
                        return Gate(True, reason, best, gaps, (f, g, s, t))
    wide = [f for f, gap in gaps.items() if gap >= min_gap - 1e-12]
    winners = sorted({best[f] for f in wide})
    reason = (f"no two families differ by {min_gap:.2f} in opposite directions: families with a gap of at least "
              f"{min_gap:.2f}: {', '.join(wide) or 'none'}; their best strategies: {', '.join(winners) or 'none'}. "
              "Strategy choice cannot matter much on this family set")
    return Gate(False, reason, best, gaps)


def render_markdown(table: dict[str, dict[str, dict]], result: Gate, strategies: list[str], about: str) -> str:
    lines = ["## Pilot: accuracy per family with the strategy forced", "", about, "",
             "| family | " + " | ".join(strategies) + " | best | best − worst |",
             "|---|" + "---|" * len(strategies) + "---|---|"]
    for family, cells in table.items():
        shown = [f"{cells[s]['accuracy']:.3f} ({cells[s]['correct']}/{cells[s]['n']})" if s in cells else "–"
                 for s in strategies]
        lines.append(f"| {family} | " + " | ".join(shown) + f" | {result.best.get(family, '–')} | "
                     f"{result.gaps.get(family, 0):.3f} |")
    lines += ["", f"Gate {'passed' if result.passed else 'refused'}: {result.reason}.", ""]
    return "\n".join(lines + claims_markdown(table, strategies))


def claims_markdown(table: dict[str, dict[str, dict]], strategies: list[str]) -> list[str]:
    """Where the forced answers' written claims are false (text strategies: a program's are Python's)."""
    rows = []
    for family, cells in table.items():
        for s in strategies:
            claims = cells.get(s, {}).get("claims")
            if not claims or not (claims["arithmetic"] or claims["comparisons"]):
                continue
            rows.append(f"| {family} | {s} | {markdown_cells(claims)} |")
    if not rows:
        return []
    return ["What the forced answers state in writing, checked (`claims.py`): the share of false arithmetic "
            "(`17 * 4 = 68`, `35 / 9 = 3 with 8 left over`) and false comparisons (`17 is more than 12`), and of "
            "the wrong answers, how many hold a false one.", "",
            "| family | strategy | arithmetic false | comparisons false | wrong answers with a false claim |",
            "|---|---|---|---|---|", *rows, ""]


def plot(table: dict[str, dict[str, dict]], strategies: list[str]) -> bytes:
    from siked_runtime.report import png, pyplot

    fig, ax = pyplot().subplots(figsize=(max(5.0, 1.6 * len(table)), 3.8))
    width = 0.8 / max(len(strategies), 1)
    families = list(table)
    for i, s in enumerate(strategies):
        xs = [k + (i - (len(strategies) - 1) / 2) * width for k in range(len(families))]
        ys = [table[f].get(s, {}).get("accuracy", 0.0) for f in families]
        bars = ax.bar(xs, ys, width, label=s, color=f"C{i}")
        for bar, f in zip(bars, families):
            cell = table[f].get(s)
            if cell:
                ax.annotate(f"{cell['correct']}/{cell['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(families)), families)
    ax.set(ylabel="accuracy", ylim=(0, 1), title="Pilot: iteration 0 with the strategy tag forced")
    ax.legend(fontsize=8)
    return png(fig)


def write_pilot(out_dir: Path, table: dict, result: Gate, strategies: list[str], about: str, meta: dict) -> dict:
    import json

    doc = {"table": table, "gate": asdict(result), "strategies": strategies, **meta}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pilot.json").write_text(json.dumps(doc, indent=1))
    (out_dir / "pilot.md").write_text(render_markdown(table, result, strategies, about))
    (out_dir / "pilot.png").write_bytes(plot(table, strategies))
    return doc
