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
