"""The comparison report of `siked experiment`: experiment.json, experiment.md and three plots.

    final.png       final accuracy per arm and set, mean over seeds with min–max bars
    iterations.png  accuracy per iteration of the arms that iterate (mean over seeds)
    strategies.png  strategy mix of the training data and of the student per iteration, with α
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


def render_markdown(summary: dict) -> str:
    sets = _sets(summary)
    lines = [
        f"# Experiment `{summary['name']}`",
        "",
        f"Seeds {summary['seeds']}; every run gets {summary['total_train_steps']} optimizer steps in all, split "
        "evenly over its training stages (same batch size), so arms are compared at equal training compute.",
        "Final accuracy is the best-on-validation iteration's; mean ± standard deviation over seeds (min–max).",
        "",
        "| arm | runs | steps/stage | " + " | ".join(sets) + " | wall s (mean) |",
        "|---|---|---|" + "---|" * len(sets) + "---|",
    ]
    for name, arm in summary["arms"].items():
        wall = f"{arm['wall_seconds']['mean']:.0f}" if arm["wall_seconds"] else "–"
        lines.append(f"| {name} | {arm['runs']} | {arm['steps_per_stage']} | "
                     + " | ".join(_cell(arm["final"].get(s)) for s in sets) + f" | {wall} |")
    untrained = next((a["untrained"] for a in summary["arms"].values() if a["untrained"]), {})
    if untrained:
        lines += ["", "Untrained student: " + ", ".join(f"{s} {untrained[s]['mean']:.3f}" for s in sets
                                                       if s in untrained)]
    iterating = {n: a for n, a in summary["arms"].items() if len(a["iterations"]) > 1}
    if iterating:
        lines += ["", "## Per iteration (arms that iterate; means over seeds)", "",
                  "| arm | iteration | " + " | ".join(sets) + " | α | train cot/l2m/pot | student cot/l2m/pot |",
                  "|---|---|" + "---|" * len(sets) + "---|---|---|"]
        for name, arm in iterating.items():
            for it in arm["iterations"]:
                alpha = "–" if it["alpha"] is None else f"{it['alpha']:.2f}"
                mix = ["/".join(f"{it[f].get(s, 0):.2f}" for s in STRATEGIES)
                       for f in ("train_strategy_shares", "strategy_shares")]
                lines.append(f"| {name} | {it['iteration']} | "
                             + " | ".join(f"{it['eval'].get(s, 0):.3f}" for s in sets)
                             + f" | {alpha} | {mix[0]} | {mix[1]} |")
    lines += ["", "![final accuracy](final.png)", "", "![accuracy per iteration](iterations.png)", "",
              "![strategy mix](strategies.png)", ""]
    return "\n".join(lines)


def plot_final(summary: dict) -> bytes:
    plt = pyplot()
    sets, arms = _sets(summary), list(summary["arms"])
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(arms)), 4))
    width = 0.8 / max(len(sets), 1)
    for i, s in enumerate(sets):
        stats = [summary["arms"][a]["final"].get(s) for a in arms]
        xs = [k + (i - (len(sets) - 1) / 2) * width for k in range(len(arms))]
        means = [st["mean"] if st else 0 for st in stats]
        err = [[(st["mean"] - st["min"]) if st else 0 for st in stats], [(st["max"] - st["mean"]) if st else 0
                                                                            for st in stats]]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=s, color=f"C{i}")
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    ax.set(ylabel="accuracy", ylim=(0, 1), title="Final accuracy per arm (mean over seeds, min–max)")
    ax.legend(fontsize=8)
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
    (out_dir / "final.png").write_bytes(plot_final(summary))
    (out_dir / "iterations.png").write_bytes(plot_iterations(summary))
    (out_dir / "strategies.png").write_bytes(plot_strategies(summary))
