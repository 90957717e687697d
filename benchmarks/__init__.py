"""Speed measurements: each benchmark measures ours and a baseline in the same run.

    python -m benchmarks all --quick --out benchmarks/results/cpu.jsonl

See `benchmarks/__main__.py` for the list, and README.md's "Benchmarks" section for results.
"""
