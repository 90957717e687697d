"""The comparison report of `siked experiment`: experiment.json, experiment.md and plots.

    final.png       fixed-final-iteration test accuracy per arm (mean over seeds, min–max) and
                    each arm's difference from the reference with its 95% bootstrap interval
    iterations.png  test accuracy per iteration of the arms that iterate (mean over seeds)
    routing.png     per family, the share of questions routed to the pilot's best strategy, per iteration
    strategies.png  strategy mix of the training data and of the student per iteration, with α
    pilot.png       (written by the pilot) accuracy per family × forced strategy
"""

from __future__ import annotations

import json
from pathlib import Path

from siked_runtime.graph import VALIDATION
from siked_runtime.report import draw_strategy_mix, png, pyplot
from siked_runtime.strategies import STRATEGIES


def _sets(summary: dict) -> list[str]:
    names = {s for arm in summary["arms"].values() for s in arm["final"]}
    return sorted(names, key=lambda s: (s != VALIDATION, s))


def _cell(stat: dict | None) -> str:
    if not stat:
        return "–"
    if stat["n"] == 1:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f} ({stat['min']:.3f}–{stat['max']:.3f})"


def _num(x, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def _mix(shares: dict | None) -> str:
    return "/".join(f"{(shares or {}).get(s, 0) or 0:.2f}" for s in STRATEGIES)


def _design(summary: dict) -> list[str]:
    first = next((r for r in summary["runs"]), None)
    reference = summary["arms"].get(summary["reference"]) or {}
    its = reference.get("iterations") or []
    questions = sum(f["n"] for f in its[-1]["families"].values()) if its else 0
    lines = [
        f"Seeds {summary['seeds']}; every arm gets {summary['total_train_steps']} optimizer steps in all (same batch "
        "size). SIKeD-method arms branch from one shared iteration 0 per seed (its teacher, train[0] and eval[0] "
        "stages are reused) and spend the remaining steps over iterations 1..T; the reference arm "
        f"`{summary['reference']}` continues on the teacher's data only (mixing policy `teacher`). Distillation arms "
        "train once from the base model for all the steps. Runs go to their last iteration: the **fixed final "
        "iteration** is the primary result; best-on-validation selection is reported beside it.",
    ]
    if questions:
        lines += ["", f"Test questions: {questions} (per family in the tables below)."]
    if first is None:
        lines += ["", "No arm has finished yet."]
    return lines


def _primary(summary: dict) -> list[str]:
    sets = _sets(summary)
    tests = summary.get("test_sets") or [s for s in sets if s != VALIDATION]
    lines = ["## Primary result: fixed final iteration", "",
             "Mean ± sd over seeds (min–max). Δ: arm − reference on the same test questions, paired bootstrap over "
             "seeds × questions (10,000 resamples) with its 95% interval and two-sided p; McNemar: exact test per "
             "seed; MDD: the smallest difference this design detects (two-sided 5%, power 80%).", "",
             "| arm | runs | steps/stage | " + " | ".join(sets) + " | Δ " + " / ".join(tests)
             + " [95% CI] | p | McNemar p per seed | MDD | wall s (own) |",
             "|---|---|---|" + "---|" * len(sets) + "---|---|---|---|---|"]
    for name, arm in summary["arms"].items():
        cmp_ = summary["comparisons"].get(name, {})
        deltas, ps, mcn, mdd = [], [], [], []
        for t in tests:
            c = cmp_.get(t)
            if not c:
                continue
            deltas.append(f"{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]")
            ps.append(f"{c['p']:.4f}")
            mcn.append(", ".join(f"{m['p']:.3f} ({m['a_only']}:{m['b_only']})" for m in c["mcnemar"]))
            mdd.append(f"{c['mdd']:.3f}")
        ref = name == summary["reference"]
        wall = arm.get("seconds")
        own = arm.get("own_seconds")
        lines.append(f"| {name}{' (reference)' if ref else ''} | {arm['runs']} | {arm['steps_per_stage']} | "
                     + " | ".join(_cell(arm["final"].get(s)) for s in sets)
                     + f" | {'; '.join(deltas) or '–'} | {'; '.join(ps) or '–'} | {'; '.join(mcn) or '–'} | "
                     f"{'; '.join(mdd) or '–'} | {_num(wall and wall['mean'], '.0f')} "
                     f"({_num(own and own['mean'], '.0f')}) |")
    lines += ["", "McNemar cells are p (questions only the arm solves : only the reference solves). Wall seconds "
              "include sampling and evaluation; with the shared iteration 0 counted in every arm that branches "
              "from it (in parentheses: the arm's own stages)."]
    untrained = summary.get("untrained") or {}
    if untrained:
        lines += ["", "Untrained student: " + ", ".join(f"{s} {untrained[s]:.3f}" for s in sets if s in untrained)]
    lines += ["", "### Best-on-validation iteration", "", "| arm | " + " | ".join(sets) + " |",
              "|---|" + "---|" * len(sets)]
    for name, arm in summary["arms"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(arm["best_on_validation"].get(s)) for s in sets) + " |")
    return lines


def _shared_samples(summary: dict) -> str:
    """A sentence naming the arms that reuse another arm's sample[1] (same model, same draws)."""
    reused = {name: arm.get("sample_from") for name, arm in summary["arms"].items() if arm.get("sample_from")}
    if not reused:
        return ""
    return (" " + "; ".join(f"`{name}` trains on the self-samples of {', '.join(f'`{d}`' for d in donors)}"
                            for name, donors in reused.items())
            + " (its sample[1] stage, reused: the same model and the same seeded draws), so those arms differ only "
            "in how they mix or train after iteration 0; the stage's seconds count in each.")


def _per_iteration(summary: dict) -> list[str]:
    sets = _sets(summary)
    lines = ["## Per iteration (means over seeds)", "",
             "Routing share: how often the student picks the strategy the pilot found best for the question's "
             "family (test questions). Rows: teacher / self rows trained on, and the self rows that reproduce a "
             "teacher row verbatim." + _shared_samples(summary), "",
             "| arm | it | " + " | ".join(sets) + " | routing | α | teacher / self / reproduced rows | samples "
             "(solved q) | train cot/l2m/pot | student cot/l2m/pot (validation) | steps | s |",
             "|---|---|" + "---|" * len(sets) + "---|---|---|---|---|---|---|---|"]
    for name, arm in summary["arms"].items():
        for it in arm["iterations"]:
            shared = " (shared)" if it.get("shared") else ""
            lines.append(
                f"| {name} | {it['iteration']}{shared} | " + " | ".join(_num(it["eval"].get(s), ".3f") for s in sets)
                + f" | {_num(it['routing_share'])} | {_num(it['alpha'])} | {_num(it['teacher_rows'], '.0f')} / "
                f"{_num(it['self_rows'], '.0f')} / {_num(it['reproductions'], '.0f')} | {_num(it['samples'], '.0f')} "
                f"({_num(it['questions_solved'], '.0f')}) | {_mix(it['train_strategy_shares'])} | "
                f"{_mix(it['strategy_shares'])} | {_num(it['steps'], '.0f')} | {_num(it['seconds'], '.0f')} |")
    return lines


def _families(summary: dict) -> list[str]:
    best = ((summary.get("pilot") or {}).get("gate") or {}).get("best", {})
    lines = ["## Per family (test questions, means over seeds)", "",
             "Accuracy, the student's strategy use (cot/l2m/pot) and its routing share to the pilot's best strategy "
             f"({', '.join(f'{f}: {s}' for f, s in best.items()) or 'no pilot'}), per iteration.", "",
             "| arm | it | family | n | accuracy | student cot/l2m/pot | routing |", "|---|---|---|---|---|---|---|"]
    for name, arm in summary["arms"].items():
        for it in arm["iterations"]:
            for family, f in it["families"].items():
                lines.append(f"| {name} | {it['iteration']} | {family} | {f['n']} | {_num(f['accuracy'], '.3f')} | "
                             f"{_mix(f['strategy_shares'])} | {_num(f['routing_share'])} |")
    diffs = {a: {t: c.get("per_family", {}) for t, c in per.items()} for a, per in summary["comparisons"].items()}
    if diffs:
        lines += ["", f"### Where arms win or lose against `{summary['reference']}` (fixed final iteration)", "",
                  "| arm | test set | " + " | ".join(sorted({f for per in diffs.values() for t in per.values()
                                                           for f in t})) + " |"]
        families = sorted({f for per in diffs.values() for t in per.values() for f in t})
        lines.append("|---|---|" + "---|" * len(families))
        for a, per in diffs.items():
            for t, fam in per.items():
                lines.append(f"| {a} | {t} | " + " | ".join(f"{fam[f]['diff']:+.3f}" if f in fam else "–"
                                                         for f in families) + " |")
    return lines


def _per_seed(summary: dict) -> list[str]:
    """Each seed's runs side by side at the fixed final iteration: test accuracy and strategy use."""
    runs = [r for r in summary.get("runs", []) if r.get("final")]
    tests = summary.get("test_sets") or []
    if not runs or not tests:
        return []
    test, arms = tests[0], list(summary["arms"])
    branching = [a for a in arms if summary["arms"][a].get("branches")]
    lines = ["## Per seed (fixed final iteration)", "",
             f"{test} accuracy, then the student's strategy use (cot/l2m/pot) on those questions. Means over seeds "
             "can hide that a student picks one strategy for nearly every question, and which one differs by seed.",
             "", "| seed | " + ("iteration 0 (shared) | " if branching else "") + " | ".join(arms) + " |",
             "|---|" + ("---|" if branching else "") + "---|" * len(arms)]

    def cell(c: dict | None) -> str:
        if not c or test not in c["eval"]:
            return "–"
        return f"{c['eval'][test]:.3f} · {_mix(c['strategy_shares'].get(test))}"

    for seed in summary["seeds"]:
        mine = {r["arm"]: r for r in runs if r["seed"] == seed}
        if not mine:
            continue
        shared = next((mine[a]["first"] for a in branching if a in mine), None)
        lines.append(f"| {seed} | " + (f"{cell(shared)} | " if branching else "")
                     + " | ".join(cell(mine[a]["final"]) if a in mine else "–" for a in arms) + " |")
    return lines


def render_markdown(summary: dict) -> str:
    lines = [f"# Experiment `{summary['name']}`", ""] + _design(summary)
    if summary.get("stopped"):
        lines += ["", f"**Stopped: {summary['stopped']}.**"]
    pilot = summary.get("pilot")
    if pilot:
        from siked_runtime.pilot import Gate, render_markdown as pilot_markdown

        gate = Gate(**{**pilot["gate"], "pair": tuple(pilot["gate"]["pair"]) if pilot["gate"].get("pair") else None})
        about = (f"The first seed's iteration 0, greedy, on {pilot['questions']} pilot questions (seed {pilot['seed']}) "
                 "with each strategy's tag prefilled; accuracy (correct/n).")
        lines += ["", pilot_markdown(pilot["table"], gate, pilot["strategies"], about), "![pilot](pilot.png)"]
        if not gate.passed and pilot.get("required") is False:
            lines += ["", "The gate refused, and this experiment sets `pilot.required: false`, so the arms ran anyway: "
                      "their comparison stands, but it does not show routing by family."]
    if summary["arms"] and any(a["runs"] for a in summary["arms"].values()):
        lines += [""] + _primary(summary) + [""] + _per_seed(summary) + [""] + _per_iteration(summary) + [""]
        lines += _families(summary)
        lines += ["", "![final accuracy](final.png)", "", "![accuracy per iteration](iterations.png)", "",
                  "![routing share](routing.png)", "", "![strategy mix](strategies.png)", ""]
    return "\n".join(lines)


def plot_final(summary: dict) -> bytes:
    plt = pyplot()
    tests = summary.get("test_sets") or []
    arms = [a for a, arm in summary["arms"].items() if arm["runs"]]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(9.0, 2.0 * len(arms)), 4))
    width = 0.8 / max(len(tests), 1)
    for i, s in enumerate(tests):
        stats = [summary["arms"][a]["final"].get(s) for a in arms]
        xs = [k + (i - (len(tests) - 1) / 2) * width for k in range(len(arms))]
        means = [st["mean"] if st else 0 for st in stats]
        err = [[(st["mean"] - st["min"]) if st else 0 for st in stats],
               [(st["max"] - st["mean"]) if st else 0 for st in stats]]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=s, color=f"C{i}")
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    ax.set(ylabel="accuracy", ylim=(0, 1), title="Fixed final iteration (mean over seeds, min–max)")
    ax.legend(fontsize=8)
    others = [a for a in arms if a in summary["comparisons"]]
    for i, s in enumerate(tests):
        for k, a in enumerate(others):
            c = summary["comparisons"][a].get(s)
            if c:
                x = k + (i - (len(tests) - 1) / 2) * width
                bx.errorbar([x], [c["diff"]], yerr=[[c["diff"] - c["ci"][0]], [c["ci"][1] - c["diff"]]], fmt="o",
                            color=f"C{i}", capsize=4)
    bx.axhline(0, color="grey", lw=0.8)
    bx.set_xticks(range(len(others)), others, rotation=30, ha="right")
    bx.set(ylabel=f"accuracy − {summary['reference']}", title="Difference with 95% bootstrap interval")
    fig.tight_layout()
    return png(fig)


def plot_iterations(summary: dict) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    sets = [s for s in _sets(summary) if s != VALIDATION] or _sets(summary)
    styles = ["-", "--", ":", "-."]
    for k, (name, arm) in enumerate(summary["arms"].items()):
        its = arm["iterations"]
        if len(its) < 2:
            continue
        for j, s in enumerate(sets):
            ax.plot([it["iteration"] for it in its], [it["eval"].get(s) for it in its], "o" + styles[j % 4],
                    color=f"C{k}", label=f"{name} {s}")
    ax.set(xlabel="iteration", ylabel="accuracy", ylim=(0, 1), title="Accuracy per iteration (mean over seeds)")
    ax.legend(fontsize=7)
    return png(fig)


def plot_routing(summary: dict) -> bytes:
    """One panel per family: routing share to the pilot's best strategy per iteration, per arm."""
    families = sorted({f for arm in summary["arms"].values() for it in arm["iterations"] for f in it["families"]})
    fig, axes = pyplot().subplots(1, max(len(families), 1), figsize=(4 * max(len(families), 1), 3.6), squeeze=False)
    best = ((summary.get("pilot") or {}).get("gate") or {}).get("best", {})
    for ax, family in zip(axes[0], families):
        for k, (name, arm) in enumerate(summary["arms"].items()):
            points = [(it["iteration"], it["families"][family]["routing_share"]) for it in arm["iterations"]
                      if family in it["families"] and it["families"][family]["routing_share"] is not None]
            if points:
                ax.plot(*zip(*points), "o-", color=f"C{k}", label=name)
        ax.set(title=f"{family} (best: {best.get(family, '?')})", xlabel="iteration", ylim=(0, 1))
    axes[0][0].set_ylabel("share routed to the best strategy")
    if families:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def plot_strategies(summary: dict) -> bytes:
    iterating = {n: a for n, a in summary["arms"].items() if len(a["iterations"]) > 1}
    fig, axes = pyplot().subplots(1, max(len(iterating), 1), figsize=(4.2 * max(len(iterating), 1), 3.8),
                                  squeeze=False)
    for ax, (name, arm) in zip(axes[0], iterating.items()):
        draw_strategy_mix(ax, arm["iterations"], alpha_label="α")
        ax.set(title=name, xlabel="iteration (left: train data, right: student)")
    axes[0][0].set_ylabel("share")
    if iterating:
        axes[0][0].legend(fontsize=7)
    else:
        axes[0][0].text(0.5, 0.5, "no arm iterates", ha="center", va="center", transform=axes[0][0].transAxes)
    return png(fig)


def write_experiment_report(summary: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "experiment.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "experiment.md").write_text(render_markdown(summary))
    if any(a["runs"] for a in summary["arms"].values()):
        (out_dir / "final.png").write_bytes(plot_final(summary))
        (out_dir / "iterations.png").write_bytes(plot_iterations(summary))
        (out_dir / "routing.png").write_bytes(plot_routing(summary))
        (out_dir / "strategies.png").write_bytes(plot_strategies(summary))
