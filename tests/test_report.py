"""The run report's plots: every line the title names is drawn, and no legend covers data."""

from __future__ import annotations

from siked_runtime.report import accuracy_figure, pyplot, strategies_figure


def _report(teacher: bool = True) -> dict:
    shares = {"cot": 0.2, "l2m": 0.3, "pot": 0.5}
    its = [{"iteration": t, "alpha": a, "eval": {"validation": v, "synthetic-test": v - 0.05},
            "strategy_shares": shares, "train_strategy_shares": shares}
           for t, a, v in ((0, None, 0.3), (1, 0.9, 0.6), (2, 0.95, 0.95))]
    report = {"baseline": {"validation": 0.1, "synthetic-test": 0.05}, "iterations": its, "best_iteration": 2}
    if teacher:
        report["teacher"] = {"validation": 1.0, "synthetic-test": 0.98}
    return report


def _legend_clear_of_axes(fig) -> bool:
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, plot = ax.get_legend().get_window_extent(), ax.get_window_extent()
    return legend.x0 >= plot.x1  # entirely right of the plotting area


def test_accuracy_plot_draws_the_references_its_title_names():
    fig = accuracy_figure(_report())
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert {"validation: untrained", "validation: teacher", "synthetic-test: untrained",
            "synthetic-test: teacher"} <= set(labels)
    teacher_line = ax.get_lines()[labels.index("synthetic-test: teacher")]
    assert list(teacher_line.get_ydata()) == [0.98, 0.98] and teacher_line.get_linestyle() == ":"
    assert "dashed: untrained" in ax.get_title() and "dotted: teacher" in ax.get_title()
    assert _legend_clear_of_axes(fig)
    pyplot().close(fig)


def test_accuracy_title_promises_no_line_that_is_not_there():
    fig = accuracy_figure({**_report(teacher=False), "baseline": {}})
    ax = fig.axes[0]
    assert "untrained" not in ax.get_title() and "teacher" not in ax.get_title()
    assert [line.get_label() for line in ax.get_lines()] == ["validation", "synthetic-test"]
    pyplot().close(fig)


def test_strategy_legend_leaves_the_alpha_line_visible():
    fig = strategies_figure(_report())
    ax = fig.axes[0]
    alpha = [line for line in ax.get_lines() if line.get_label().startswith("α")]
    assert list(alpha[0].get_ydata()) == [0.9, 0.95]  # near the top, where the legend used to sit
    assert _legend_clear_of_axes(fig)
    pyplot().close(fig)


def _teacher_spec(pricing=None):
    from siked_runtime.spec import DistillationSpec

    teacher = {"kind": "openai", "model": "t", "endpoint": "http://teacher:8000/v1"}
    if pricing:
        teacher["pricing"] = pricing
    return DistillationSpec.model_validate({"student": {"model": "builtin:tiny-random"}, "teacher": teacher,
                                            "strategies": ["cot", "pot"]})


def _full_report(**extra) -> dict:
    """`_report()` with every field `render_markdown` reads."""
    its = [{"regressed": False, "teacher_rows": 10, "self_rows": 0, "sample_accuracy": None,
            "kl_train_to_student": None, "train_loss": None, **it} for it in _report()["iterations"]]
    return {**_report(), "iterations": its, "finished": True, "stop_reason": None, **extra}


USAGE = {"prompt_tokens": 2_000_000, "completion_tokens": 500_000, "total_tokens": 2_500_000, "requests": 410,
         "retries": 12, "failures": 3, "replies": 800, "reused_replies": 150, "replies_without_usage": 0}


def test_teacher_usage_and_cost_in_one_table_row():
    from siked_runtime.report import render_markdown, teacher_usage

    spec = _teacher_spec({"inputPerMillion": 1.5, "outputPerMillion": 6.0, "currency": "EUR"})
    # a manifest merged from shards has usage but no cost: the spec's prices give it
    usage = teacher_usage(spec, {"questions": 200, "usage": USAGE})
    assert usage["cost"] == {"total": 6.0, "currency": "EUR"} and usage["questions_x_strategies"] == 400
    priced = teacher_usage(spec, {"questions": 200, "usage": USAGE, "cost": {"total": 5.5, "currency": "USD"}})
    assert priced["cost"]["total"] == 5.5  # what the stage recorded wins
    assert teacher_usage(spec, {"questions": 200}) is None  # an offline teacher: no section

    text = render_markdown("demo", _full_report(teacher_usage=usage))
    assert "## Teacher API" in text
    assert "| 2,500,000 (2,000,000 + 500,000) | 800 (150) | 410 | 12 | 3 of 400 | 6.0000 EUR |" in text
    unpriced = teacher_usage(_teacher_spec(), {"questions": 200, "usage": {**USAGE, "replies_without_usage": 4}})
    text = render_markdown("demo", _full_report(teacher_usage=unpriced))
    assert "| 3 of 400 | – |" in text and "4 replies came without token usage" in text


def test_report_shows_the_written_claims_of_the_text_answers_per_iteration():
    from siked_runtime.claims import tally
    from siked_runtime.report import render_markdown

    rows = [{"completion": "[cot]\n3 is more than 5, so 7.\n4 + 7 = 11.\nAnswer: 11", "verdict": "wrong"},
            {"completion": "[cot]\n2 * 4 = 8.\nAnswer: 8", "verdict": "correct"},
            {"completion": "[l2m]\nQ: How many?\nA: 6 * 6 = 42.\nAnswer: 42", "verdict": "wrong"},
            {"completion": "[cot]\nThe cost is 9.\nAnswer: 9", "verdict": "wrong"}]  # nothing written to check
    counts = tally(rows)
    assert counts == {"arithmetic": 3, "arithmetic_false": 1, "comparisons": 1, "comparisons_false": 1,
                      "wrong": 3, "wrong_with_false_claim": 2}
    report = _full_report()
    report["iterations"] = [{**it, "claims": counts if it["iteration"] else None} for it in report["iterations"]]
    text = render_markdown("demo", report)
    assert "## Written claims of the text answers (validation)" in text
    assert "| 1 | 0.33 (1/3) | 1.00 (1/1) | 0.67 (2/3) |" in text
    assert "| 0 |" not in text.split("## Written claims")[1]  # an iteration without counts gets no row
    assert "## Written claims" not in render_markdown("demo", _full_report())  # older manifests: no section
