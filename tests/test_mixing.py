"""Mixing policies, α bookkeeping, de-duplication and per-question caps."""

import pytest

from siked_runtime.mixing import alpha_counts, cap_per_question, dedupe, mix


def rows(source, spec):
    """spec: {question id: [strategy, ...]} → rows with distinct completions."""
    return [{"id": q, "strategy": s, "completion": f"[{s}] {source} {q} {i}"}
            for q, strategies in spec.items() for i, s in enumerate(strategies)]


TEACHER = rows("teacher", {"q1": ["cot", "l2m", "pot"], "q2": ["cot", "l2m", "pot"], "q3": ["cot", "pot"]})
SELF = rows("self", {"q1": ["pot", "pot"], "q3": ["cot"]})


def test_all_is_union():
    m = mix(TEACHER, SELF, "all")
    assert (m.teacher_rows, m.self_rows) == (8, 3)
    assert m.alpha == pytest.approx(8 / 11)
    assert {r["source"] for r in m.rows} == {"teacher", "self"}


def test_adaptive_keeps_teacher_rows_only_for_unsolved_questions():
    m = mix(TEACHER, SELF, "adaptive")
    assert {r["id"] for r in m.rows if r["source"] == "teacher"} == {"q2"}
    assert (m.teacher_rows, m.self_rows) == (3, 3)
    assert m.alpha == 0.5


def test_self_only():
    m = mix(TEACHER, SELF, "self")
    assert (m.teacher_rows, m.self_rows, m.alpha) == (0, 3, 0.0)
    assert mix(TEACHER, [], "self").alpha is None


@pytest.mark.parametrize("teacher,own,alpha,expected", [
    (100, 10, 0.5, (10, 10)),
    (100, 10, 0.9, (90, 10)),
    (5, 100, 0.5, (5, 5)),       # too few teacher rows: self rows shrink
    (100, 10, 1.0, (100, 0)),
    (100, 10, 0.0, (0, 10)),
    (100, 0, 0.3, (100, 0)),     # nothing of its own yet: teacher only
])
def test_alpha_counts(teacher, own, alpha, expected):
    assert alpha_counts(teacher, own, alpha) == expected


def test_alpha_counts_rejects_out_of_range():
    with pytest.raises(ValueError, match="alpha must be in"):
        alpha_counts(1, 1, 1.5)


def test_alpha_policy_realises_the_schedule_and_is_deterministic():
    teacher = rows("teacher", {f"q{i}": ["cot", "pot"] for i in range(50)})
    own = rows("self", {f"q{i}": ["pot"] for i in range(20)})
    m = mix(teacher, own, "alpha", alpha=0.2, seed=3)
    assert (m.teacher_rows, m.self_rows) == (5, 20)
    assert m.alpha == pytest.approx(0.2)
    assert m.rows == mix(teacher, own, "alpha", alpha=0.2, seed=3).rows
    assert m.rows != mix(teacher, own, "alpha", alpha=0.2, seed=4).rows


def test_alpha_policy_needs_alpha():
    with pytest.raises(ValueError, match="needs alpha"):
        mix(TEACHER, SELF, "alpha")


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown mixing policy 'most'"):
        mix(TEACHER, SELF, "most")


def test_dedupe_ignores_whitespace_and_keeps_first():
    a = {"id": "q", "strategy": "cot", "completion": "x  = 1\nAnswer: 1"}
    b = {"id": "q", "strategy": "cot", "completion": "x = 1 Answer: 1"}
    c = {"id": "other", "strategy": "cot", "completion": "x = 1 Answer: 1"}
    assert dedupe([a, b, c]) == [a, c]


def test_reproductions_of_teacher_rows_are_kept_and_counted():
    # Two verbatim reproductions (one with other whitespace) and one new solution.
    own = [{**TEACHER[0]}, {**TEACHER[5], "completion": TEACHER[5]["completion"].replace(" ", "  ")},
           {"id": "q1", "strategy": "pot", "completion": "[pot] new"}]
    m = mix(TEACHER, own, "all")
    assert (m.teacher_rows, m.self_rows, m.reproductions) == (8, 3, 2)
    assert sum(r["completion"] == TEACHER[0]["completion"] for r in m.rows) == 2
    assert mix(TEACHER, own, "adaptive").reproductions == 0  # solved questions lose their teacher rows
    # the student repeating itself is still one row
    assert mix(TEACHER, [own[2], {**own[2]}], "all").self_rows == 1


def test_untagged_rows_are_never_trained_on():
    own = [{"id": "q1", "strategy": None, "completion": "42"}, {"id": "q2", "strategy": "cot", "completion": "[cot] x"}]
    m = mix(TEACHER + [{"id": "q3", "strategy": "", "completion": "7"}], own, "all")
    assert m.untagged == 2 and (m.teacher_rows, m.self_rows) == (8, 1)
    assert all(r["strategy"] for r in m.rows)


def test_teacher_policy_ignores_self_rows():
    m = mix(TEACHER, SELF, "teacher")
    assert (m.teacher_rows, m.self_rows, m.alpha) == (8, 0, 1.0)


def test_priority_keeps_one_row_per_question_in_the_given_order():
    # q1: teacher cot/l2m/pot, self pot pot; q2: teacher cot/l2m/pot; q3: teacher cot/pot, self cot
    m = mix(TEACHER, SELF, "all", priority=["pot", "cot", "l2m"])
    assert [(r["id"], r["strategy"], r["source"]) for r in m.rows] == [
        ("q2", "pot", "teacher"), ("q3", "pot", "teacher"), ("q1", "pot", "self")]
    m = mix(TEACHER, SELF, "all", priority=["cot", "pot"])
    assert {r["id"]: (r["strategy"], r["source"]) for r in m.rows} == {
        "q1": ("cot", "teacher"), "q2": ("cot", "teacher"), "q3": ("cot", "self")}
    assert (m.teacher_rows, m.self_rows) == (2, 1)
    # teacher data alone (iteration 0): one row per question
    assert [(r["id"], r["strategy"]) for r in mix(TEACHER, [], "all", priority=["l2m", "pot", "cot"]).rows] == [
        ("q1", "l2m"), ("q2", "l2m"), ("q3", "pot")]
    # a strategy missing from the order comes last
    assert {r["id"]: r["strategy"] for r in mix(TEACHER, [], "all", priority=["l2m"]).rows}["q3"] in ("cot", "pot")
    # adaptive, then priority: solved questions keep their own rows only
    m = mix(TEACHER, SELF, "adaptive", priority=["cot", "l2m", "pot"])
    assert {r["id"]: (r["strategy"], r["source"]) for r in m.rows} == {
        "q1": ("pot", "self"), "q2": ("cot", "teacher"), "q3": ("cot", "self")}


def test_cap_per_question_round_robins_strategies():
    many = rows("t", {"q": ["cot", "cot", "cot", "pot", "pot", "l2m"]})
    kept = cap_per_question(many, 3, seed=0)
    assert len(kept) == 3 and {r["strategy"] for r in kept} == {"cot", "l2m", "pot"}
    # with a cap below the number of strategies, every strategy still appears across questions
    spread = cap_per_question(rows("t", {f"q{i}": ["cot", "l2m", "pot"] for i in range(30)}), 1, seed=0)
    counts_by_strategy = {s: sum(r["strategy"] == s for r in spread) for s in ("cot", "l2m", "pot")}
    assert len(spread) == 30 and min(counts_by_strategy.values()) >= 5, counts_by_strategy
    # own rows are kept first under the cap
    capped = mix(TEACHER, SELF, "all", max_per_question=1)
    assert {r["id"]: r["source"] for r in capped.rows} == {"q1": "self", "q2": "teacher", "q3": "self"}
    m = mix(TEACHER, SELF, "all", max_per_question=2)
    counts = {}
    for r in m.rows:
        counts[r["id"]] = counts.get(r["id"], 0) + 1
    assert max(counts.values()) == 2
