"""The run report: `report.json`, `report.md` and PNG plots, rebuilt from stage manifests.

    siked report runs/quickstart

Everything comes from the manifests in storage, so the report can be re-rendered
at any time, from any machine, while the run is going or after it ended.
"""

from __future__ import annotations

import io
from typing import Mapping

from siked_runtime.claims import markdown_cells
from siked_runtime.graph import (BASELINE, EVAL, REFERENCE, SAMPLE, TEACHER, TEACHER_EVAL, TRAIN, VALIDATION,
                                 StageKey, plan)
from siked_runtime.spec import DistillationSpec, Method
from siked_runtime.storage import Store, list_manifests
from siked_runtime.strategies import STRATEGIES


def build_report(spec: DistillationSpec, done: Mapping[str, Mapping]) -> dict:
    p = plan(spec, done)
    baseline = done.get(StageKey(BASELINE).prefix, {}).get("accuracy", {})
    teacher = done.get(StageKey(TEACHER_EVAL).prefix, {}).get("accuracy")
    flags = {r.iteration: r for r in p.iterations}
    iterations = []
    for t in range(len(p.iterations)):
        ev = done[StageKey(EVAL, t).prefix]
        tr = done.get(StageKey(TRAIN, t).prefix, {})
        sa = done.get(StageKey(SAMPLE, t).prefix, {})
        iterations.append({
            "iteration": t,
            "alpha": tr.get("alpha") if t >= 1 else None,
            "teacher_rows": tr.get("teacher_rows", 0),
            "self_rows": tr.get("self_rows", 0),
            "sample_accuracy": sa.get("sample_accuracy"),
            "eval": ev["accuracy"],
            "strategy_shares": ev["strategy_shares"][VALIDATION],
            "claims": ev.get("claims", {}).get(VALIDATION),
            "train_strategy_shares": tr.get("strategy_shares"),
            "kl_train_to_student": ev.get("kl_train_to_student"),
            "regressed": flags[t].regressed,
            "train_loss": tr.get("training", {}).get("train_loss"),
            "internalization": tr.get("internalization"),
        })
    report = {"baseline": baseline, "iterations": iterations, "best_iteration": p.best_iteration,
              "stop_reason": p.stop_reason, "finished": p.finished}
    if teacher is not None:
        report["teacher"] = teacher
    if usage := teacher_usage(spec, done.get(StageKey(TEACHER).prefix, {})):
        report["teacher_usage"] = usage
    if spec.method == Method.skintern:
        reference = done.get(StageKey(REFERENCE).prefix)
        report["skintern"] = {
            "epochs_per_stage": spec.skintern.epochs_per_stage,
            "reference": None if reference is None else {
                "accuracy": reference["accuracy"], "epochs": reference["epochs"],
                "train_loss": reference.get("training", {}).get("train_loss")},
            "inference_prompt_tokens": None if reference is None else reference["inference_prompt_tokens"],
        }
    return report


def teacher_usage(spec: DistillationSpec, stage: Mapping) -> dict | None:
    """The teacher API's tokens, requests and cost (from the stage's manifest; the cost from the spec's prices
    where the manifest has none, e.g. one merged from shards)."""
    usage = stage.get("usage")
    if not isinstance(usage, Mapping):
        return None
    out = {**usage, "questions_x_strategies": stage.get("questions", 0) * len(spec.strategies)}
    if cost := stage.get("cost"):
        out["cost"] = cost
    elif (pricing := spec.teacher.pricing) is not None:
        total = (usage.get("prompt_tokens", 0) * pricing.input_per_million
                 + usage.get("completion_tokens", 0) * pricing.output_per_million) / 1e6
        out["cost"] = {"total": round(total, 6), "currency": pricing.currency}
    return out


def render_teacher_usage(usage: dict) -> list[str]:
    """One table row: tokens, requests, retries, failures and cost of the teacher stage."""
    cost = usage.get("cost")
    missing = usage.get("replies_without_usage", 0)
    lines = ["", "## Teacher API", "",
             "| tokens (prompt + completion) | replies (from the journal) | requests | retries | failed | cost |",
             "|---|---|---|---|---|---|",
             f"| {usage.get('total_tokens', 0):,} ({usage.get('prompt_tokens', 0):,} + "
             f"{usage.get('completion_tokens', 0):,}) | {usage.get('replies', 0):,} ({usage.get('reused_replies', 0):,}) | "
             f"{usage.get('requests', 0):,} | {usage.get('retries', 0):,} | "
             f"{usage.get('failures', 0):,} of {usage.get('questions_x_strategies', 0):,} | "
             + (f"{cost['total']:.4f} {cost['currency']}" if cost else "–") + " |"]
    if missing:
        lines += ["", f"{missing} replies came without token usage; the counts above leave them out."]
    return lines


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def render_markdown(name: str, report: dict) -> str:
    sets = list(report["baseline"]) or (list(report["iterations"][0]["eval"]) if report["iterations"] else [])
    lines = [f"# DistillationRun `{name}`", ""]
    status = "finished" if report["finished"] else "in progress"
    lines += [f"Status: {status}. Best iteration (by validation accuracy): {report['best_iteration']}."]
    if report["stop_reason"]:
        lines += [f"Stopped because: {report['stop_reason']}."]
    lines += ["", "## Accuracy", "", "| | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    if report["baseline"]:
        lines.append("| untrained student | " + " | ".join(_fmt(report["baseline"].get(s)) for s in sets) + " |")
    for it in report["iterations"]:
        mark = " (best)" if it["iteration"] == report["best_iteration"] else ""
        mark += " ⚠ regression" if it["regressed"] else ""
        lines.append(f"| iteration {it['iteration']}{mark} | " + " | ".join(_fmt(it["eval"].get(s)) for s in sets) + " |")
    if report.get("teacher"):
        lines.append("| teacher | " + " | ".join(_fmt(report["teacher"].get(s)) for s in sets) + " |")
    lines += ["", "## Training data and strategies", "",
              "| iteration | teacher rows | self rows | α | sample acc. | student cot/l2m/pot | KL(train‖student) | loss |",
              "|---|---|---|---|---|---|---|---|"]
    for it in report["iterations"]:
        shares = "/".join(f"{it['strategy_shares'].get(s, 0):.2f}" for s in STRATEGIES)
        lines.append(f"| {it['iteration']} | {it['teacher_rows']} | {it['self_rows']} | {_fmt(it['alpha'])} | "
                     f"{_fmt(it['sample_accuracy'])} | {shares} | {_fmt(it['kl_train_to_student'])} | "
                     f"{_fmt(it['train_loss'])} |")
    lines += render_claims(report["iterations"])
    if "teacher_usage" in report:
        lines += render_teacher_usage(report["teacher_usage"])
    if "skintern" in report:
        lines += render_skintern(report, sets)
    lines += ["", "![accuracy](accuracy.png)", "", "![strategies](strategies.png)", ""]
    return "\n".join(lines)


def render_claims(iterations: list[dict]) -> list[str]:
    """What the student's text answers on the validation split state in writing, checked (`claims.py`)."""
    rows = [(it["iteration"], it["claims"]) for it in iterations if it.get("claims")]
    if not any(c["arithmetic"] or c["comparisons"] for _, c in rows):
        return []
    lines = ["", "## Written claims of the text answers (validation)", "",
             "The cot and l2m answers' arithmetic (`17 * 4 = 68`) and comparisons (`17 is more than 12`), checked; "
             "a program's are Python's. Where most wrong text answers hold a false claim, the student loses on "
             "what a program would have computed for it.", "",
             "| iteration | arithmetic false | comparisons false | wrong text answers with a false claim |",
             "|---|---|---|---|"]
    for t, c in rows:
        lines.append(f"| {t} | {markdown_cells(c)} |")
    return lines


def render_skintern(report: dict, sets: list[str]) -> list[str]:
    """The SKIntern sections: the schedule per stage, the final comparison, the inference cost."""
    sk = report["skintern"]
    lines = ["", "## SKIntern schedule", "",
             f"Each stage trains {sk['epochs_per_stage']:g} epochs from the previous stage's weights; accuracy is "
             "question-only (no knowledge, no examples), as at inference.", "",
             "| stage | S_t | knowledge tokens kept | examples | prompt tokens / example | loss | "
             + " | ".join(sets) + " |", "|---|---|---|---|---|---|" + "---|" * len(sets)]
    for it in report["iterations"]:
        for phase in it.get("internalization") or []:
            lines.append(f"| {it['iteration']} | {phase['share']:.2f} | {_fmt(phase['knowledge_kept'])} | "
                         f"{phase['examples']} | {phase['prompt_tokens_per_example']} | {_fmt(phase['train_loss'])} | "
                         + " | ".join(_fmt(it["eval"].get(s)) for s in sets) + " |")
    ref = sk["reference"]
    final = report["iterations"][-1] if report["finished"] and report["iterations"] else None
    lines += ["", "## Question-only accuracy after training", "", "| | " + " | ".join(sets) + " |",
              "|---|" + "---|" * len(sets)]
    if report["baseline"]:
        lines.append("| untrained student | " + " | ".join(_fmt(report["baseline"].get(s)) for s in sets) + " |")
    if ref:
        lines.append(f"| standard CoT distillation ({ref['epochs']:g} epochs) | "
                     + " | ".join(_fmt(ref["accuracy"].get(s)) for s in sets) + " |")
    if final:
        epochs = sk["epochs_per_stage"] * len(report["iterations"])
        lines.append(f"| SKIntern, final stage ({epochs:g} epochs) | "
                     + " | ".join(_fmt(final["eval"].get(s)) for s in sets) + " |")
    tokens = sk["inference_prompt_tokens"]
    if tokens:
        lines += ["", f"Inference prompt tokens per question ({tokens['questions']} eval questions, the student's "
                  f"tokenizer and chat template): **{tokens['question_only']}** for SKIntern (question only) vs "
                  f"**{tokens['knowledge_augmented']}** for a knowledge-augmented student that keeps the teacher's "
                  f"knowledge and the examples in its prompt, **{tokens['ratio']}×** as many."]
    return lines


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)  # pyplot keeps every open figure alive
    return buf.getvalue()


def outside_legend(ax) -> None:
    """The legend right of the plot, where it can hide no data (savefig's tight bbox keeps it)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)


def accuracy_figure(report: dict):
    fig, ax = pyplot().subplots(figsize=(6.4, 4))
    its = [it["iteration"] for it in report["iterations"]]
    sets = sorted({s for it in report["iterations"] for s in it["eval"]}, key=lambda s: (s != VALIDATION, s))
    reference = (report.get("skintern") or {}).get("reference")
    drawn = []  # the reference lines on the plot, named in its title
    for i, name in enumerate(sets):
        color = f"C{i}"
        ax.plot(its, [it["eval"].get(name) for it in report["iterations"]], "o-", color=color, label=name)
        refs = [("untrained", "--", report["baseline"]), ("teacher", ":", report.get("teacher") or {})]
        if reference:
            refs.append(("standard distillation", "-.", reference["accuracy"]))
        for what, style, values in refs:
            if values.get(name) is not None:
                ax.axhline(values[name], color=color, ls=style, lw=1.0, label=f"{name}: {what}")
                drawn.append((what, {"--": "dashed", ":": "dotted", "-.": "dash-dot"}[style]))
    keys = list(dict.fromkeys(drawn))
    lines = f" ({', '.join(f'{style}: {what}' for what, style in keys)})" if keys else ""
    title = ("Question-only accuracy per SKIntern stage" if "skintern" in report else "Accuracy per iteration")
    ax.set(xlabel="stage" if "skintern" in report else "iteration", ylabel="accuracy", ylim=(0, 1),
           title=title + ("\n" + lines.strip() if lines else ""))
    ax.set_xticks(its)
    outside_legend(ax)
    return fig


def plot_accuracy(report: dict) -> bytes:
    return png(accuracy_figure(report))


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_strategy_mix(ax, iterations: list[dict], alpha_label: str = "α (teacher share)") -> None:
    """Per iteration, stacked strategy shares of the training data (left bar) and of the student
    (right bar, outlined), with the realised α as a line."""
    width = 0.38
    for offset, field in ((-width / 2, "train_strategy_shares"), (width / 2, "strategy_shares")):
        bottom = [0.0] * len(iterations)
        for i, s in enumerate(STRATEGIES):
            vals = [(it.get(field) or {}).get(s, 0.0) for it in iterations]
            ax.bar([it["iteration"] + offset for it in iterations], vals, width, bottom=bottom, color=f"C{i}",
                   label=s if offset < 0 else None, alpha=1.0 if offset < 0 else 0.6,
                   edgecolor="black" if offset > 0 else None)
            bottom = [b + v for b, v in zip(bottom, vals)]
    alphas = [(it["iteration"], it["alpha"]) for it in iterations if it["alpha"] is not None]
    if alphas:
        ax.plot([a[0] for a in alphas], [a[1] for a in alphas], "k^--", label=alpha_label)
    ax.set(ylim=(0, 1.05))
    ax.set_xticks([it["iteration"] for it in iterations])


def strategies_figure(report: dict):
    fig, ax = pyplot().subplots(figsize=(6.4, 4))
    draw_strategy_mix(ax, report["iterations"])
    ax.set(xlabel="iteration (left bar: training data, right bar: student on validation)", ylabel="share",
           title="Strategy mix per iteration")
    outside_legend(ax)
    return fig


def plot_strategies(report: dict) -> bytes:
    return png(strategies_figure(report))


def write_report(spec: DistillationSpec, store: Store, name: str) -> dict:
    report = build_report(spec, list_manifests(store))
    store.put_json("report.json", report)
    store.put_text("report.md", render_markdown(name, report))
    if report["iterations"]:
        store.put_bytes("accuracy.png", plot_accuracy(report))
        store.put_bytes("strategies.png", plot_strategies(report))
    return report
