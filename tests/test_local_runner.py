"""The local executor end to end on the smoke profile (tiny random student, a few synthetic questions)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from siked_runtime.local_runner import run_local, with_limit
from siked_runtime.spec import load_manifest, parse_manifest
from siked_runtime.storage import list_manifests, open_store

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "examples" / "smoke.yaml"


def smoke():
    """The smoke profile with a longer iteration 0 (3 steps, then 2 per iteration)."""
    manifest = yaml.safe_load(SMOKE.read_text())
    manifest["spec"]["training"]["iteration0Steps"] = 3
    return parse_manifest(manifest, "smoke")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    report = run_local(smoke(), run_dir)
    return run_dir, report


def test_smoke_run_completes_the_whole_graph(smoke_run):
    run_dir, report = smoke_run
    done = list_manifests(open_store(str(run_dir)))
    assert set(done) == {"teacher", "baseline", "iter-000/train", "iter-000/eval", "iter-001/sample",
                         "iter-001/train", "iter-001/eval", "final"}
    assert (run_dir / "final" / "model" / "model.safetensors").exists()
    assert (run_dir / "iter-001" / "train" / "model" / "siked-spec.yaml").exists()
    assert yaml.safe_load((run_dir / "spec.yaml").read_text())["metadata"]["name"] == "smoke"
    steps = [json.loads((run_dir / f"iter-00{t}" / "train" / "manifest.json").read_text())["training"]["steps"]
             for t in (0, 1)]
    assert steps == [3, 2]  # iteration0Steps, then maxSteps


def test_report_contract(smoke_run):
    run_dir, _ = smoke_run
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["baseline"]) == {"validation", "synthetic-test"}
    assert [it["iteration"] for it in report["iterations"]] == [0, 1]
    for it in report["iterations"]:
        assert set(it) >= {"iteration", "alpha", "teacher_rows", "self_rows", "sample_accuracy", "eval",
                           "strategy_shares"}
        assert all(0 <= acc <= 1 for acc in it["eval"].values())
        assert set(it["strategy_shares"]) == {"cot", "l2m", "pot"}
        assert set(it["claims"]) == {"arithmetic", "arithmetic_false", "comparisons", "comparisons_false", "wrong",
                                     "wrong_with_false_claim"}
        assert it["claims"]["wrong_with_false_claim"] <= it["claims"]["wrong"]
    first, second = report["iterations"]
    assert first["alpha"] is None and first["self_rows"] == 0 and first["teacher_rows"] > 0
    assert second["sample_accuracy"] is not None
    assert report["best_iteration"] in (0, 1)
    assert (run_dir / "report.md").read_text().startswith("# DistillationRun `smoke`")
    assert (run_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "strategies.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_of_a_finished_run_redoes_nothing(smoke_run):
    run_dir, _ = smoke_run
    store = open_store(str(run_dir))
    before = {k: m["published_at"] for k, m in list_manifests(store).items()}
    run_local(smoke(), run_dir)
    assert {k: m["published_at"] for k, m in list_manifests(store).items()} == before


def test_a_different_spec_for_the_same_directory_is_refused(smoke_run):
    run_dir, _ = smoke_run
    with pytest.raises(ValueError, match="different spec"):
        run_local(with_limit(smoke(), 3), run_dir)


def test_killed_run_resumes_without_redoing_finished_stages(tmp_path):
    """Kill `siked run` once iteration 1 has started, run it again: finished stages stay as they were."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "siked_runtime.cli", "run", str(SMOKE), "--dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "── train[1] ──" in line or "── sample[1] ──" in line and "done" not in line:
                time.sleep(0.5)
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines[-20:])
    store = open_store(str(run_dir))
    before = {k: m["published_at"] for k, m in list_manifests(store).items()}
    assert "iter-000/eval" in before and "final" not in before
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    after = {k: m["published_at"] for k, m in list_manifests(store).items()}
    assert "final" in after
    assert {k: after[k] for k in before} == before


def test_limit_caps_every_set_including_the_carved_validation_split():
    # gsm8k.yaml carves 200 validation questions from train; --limit 30 keeps 30 of each.
    from siked_runtime.stages.data import VALIDATION, eval_sets, train_questions

    run = with_limit(load_manifest(ROOT / "examples" / "gsm8k.yaml"), 30)
    spec = run.spec
    assert spec.datasets.validation_from_train == 30 and spec.datasets.train.limit == 60
    assert [e.limit for e in spec.datasets.eval] == [30, 30]
    if not Path(spec.datasets.train.source).exists():
        pytest.skip("GSM8K is not beside the repository")
    sets = eval_sets(spec)
    assert [len(v) for v in sets.values()] == [30, 30, 30] and VALIDATION in sets
    assert 25 <= len(train_questions(spec)) <= 30  # less any question an eval set also holds


def _ready_for_sample(run_dir: Path, shards: int):
    """A stored smoke run whose iteration 0 is done (the built-in student stands in for its model)."""
    import shutil

    from siked_runtime.local_runner import stored_run
    from siked_runtime.models import resolve_model
    from siked_runtime.storage import publish

    run = load_manifest(SMOKE)
    sampling = run.spec.sampling.model_copy(update={"shards": shards})
    run = run.model_copy(update={"spec": run.spec.model_copy(update={"sampling": sampling})})
    store = open_store(str(run_dir))
    stored_run(store, run)
    for prefix, manifest in (("teacher", {"rows": 1}), ("baseline", {"accuracy": {"validation": 0.0}}),
                             ("iter-000/train", {"rows": 1}), ("iter-000/eval", {"accuracy": {"validation": 0.0}})):
        publish(store, prefix, manifest)
    shutil.copytree(resolve_model("builtin:tiny-random"), run_dir / "iter-000" / "train" / "model")
    return run.spec, store


def test_sharded_stage_runs_its_parts_as_processes_and_redoes_only_failed_ones(tmp_path, capsys):
    import shutil

    from siked_runtime.graph import StageKey
    from siked_runtime.local_runner import PartsFailed, run_parts
    from siked_runtime.stages import run_stage
    from siked_runtime.storage import read_manifest

    spec, store = _ready_for_sample(tmp_path, shards=3)
    key = StageKey("sample", 1)
    first = run_stage(spec, store, key, part=0)  # done before: never run again
    model = tmp_path / "iter-000" / "train" / "model"
    shutil.move(model, tmp_path / "moved")
    with pytest.raises(PartsFailed, match=r"2 of 3 parts failed(.|\n)*part 1 exited with 75(.|\n)*train/model"):
        run_parts(spec, store, key)
    assert read_manifest(store, key.prefix) is None
    shutil.move(tmp_path / "moved", model)
    manifest = run_parts(spec, store, key)
    assert manifest["parts"] == 3 and manifest["questions"] == 8 and manifest["samples"] == 16
    assert read_manifest(store, "iter-001/sample/parts/0")["published_at"] == first["published_at"]
    err = capsys.readouterr().err
    assert "3 parts, 1 done before; running 2" in err and "part 2 done" in err and "(3/3 parts done)" in err


def test_saved_run_reads_a_run_directory_and_refuses_anything_else(tmp_path) -> None:
    from siked_runtime.local_runner import SPEC_KEY, saved_run

    store = open_store(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        saved_run(store)
    run = load_manifest(ROOT / "examples" / "smoke.yaml")
    store.put_text(SPEC_KEY, yaml.safe_dump(run.to_manifest(), sort_keys=False))
    assert saved_run(store).spec == run.spec
