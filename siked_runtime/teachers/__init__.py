"""Teachers: who writes the verified solutions a student is first trained on.

The offline teachers need no model and no network, which is what makes the
embedded default and the tests work on one machine:

    from siked_runtime.teachers import OFFLINE_TEACHERS
    rows = list(OFFLINE_TEACHERS["oracle"](records, ("cot", "l2m", "pot")))

* `oracle` — synthetic problems, all strategies written from the computation graph.
* `gold` — real datasets, solutions rewritten from their reference annotations
  (GSM8K calculator notes and socratic sub-questions, SVAMP/MultiArith/ASDiv equations).

Each yields rows `{"id", "answer", "strategy", "completion"}` with completions in
the canonical format of `siked_runtime.strategies`.
"""

from siked_runtime.teachers import gold, oracle

OFFLINE_TEACHERS = {"gold": gold.teach, "oracle": oracle.teach}
