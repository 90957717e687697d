"""Multi-process training with real torchrun processes on CPU (gloo), on the tiny random student.

DDP and FSDP (FSDP2, full shard) both run on CPU with gloo: 2 processes, each half of the
global batch, give the single process's losses within 1e-4 relative (measured: equal to
about 1e-7). The 2-process `siked stage train` publishes one manifest that records the
world it trained in. Run alone:

    nice -n 10 .venv/bin/python -m pytest -q tests/test_distributed_training.py

This module is also the worker that torchrun starts for the loss comparisons:
`python -m torch.distributed.run --nproc-per-node 2 tests/test_distributed_training.py OUT STRATEGY`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from siked_runtime import distributed
from siked_runtime.spec import DistillationSpec, StudentSpec, TrainingSpec, load_manifest

REPO = Path(__file__).resolve().parents[1]
SIKED = str(Path(sys.executable).parent / "siked")
LOSS_TOLERANCE = 1e-4  # relative, per logged step


def _spec(**changes) -> DistillationSpec:
    document = load_manifest(REPO / "examples" / "smoke.yaml").to_manifest()["spec"]
    for key, value in changes.items():
        document[key] = {**document.get(key, {}), **value}
    return DistillationSpec.model_validate(document)


# --- the world and the torchrun command (pure) --------------------------------------------------


def test_world_defaults_to_the_train_stage_gpus() -> None:
    ddp = _spec(training={"distributed": {"strategy": "ddp"}})
    assert distributed.world(ddp, None) == (1, 1) and not distributed.needs_launcher(ddp, None)
    assert distributed.world(ddp, 4) == (1, 4) and distributed.needs_launcher(ddp, 4)
    cpu = _spec(training={"distributed": {"strategy": "ddp", "nprocPerNode": 2, "nodes": 3}})
    assert distributed.world(cpu, None) == (3, 2) and distributed.world_size(cpu, 8) == 6
    assert distributed.world(_spec(), 8) == (1, 1)  # strategy none: one process whatever the GPUs


def test_torchrun_argv_runs_an_executable_or_a_module() -> None:
    spec = _spec(training={"distributed": {"strategy": "fsdp", "nodes": 2, "port": 29400}})
    argv = distributed.torchrun_argv(spec, 4, node_rank="$(SIKED_NODE_RANK)", master_addr="run-train-0.run",
                                     stage_argv=["siked", "stage", "train", "--run-uri", "s3://b/r", "--iteration", "1"])
    assert argv == ["torchrun", "--nnodes", "2", "--nproc-per-node", "4", "--node-rank", "$(SIKED_NODE_RANK)",
                    "--master-addr", "run-train-0.run", "--master-port", "29400",
                    "--no-python", "siked", "stage", "train", "--run-uri", "s3://b/r", "--iteration", "1"]
    module = distributed.torchrun_argv(spec, 4, node_rank="0", master_addr="127.0.0.1", master_port=1234,
                                       stage_argv=["-m", "siked_jobs.stage", "train"])
    assert module[-5:] == ["--master-port", "1234", "-m", "siked_jobs.stage", "train"] and "--no-python" not in module


def test_batch_size_is_split_over_the_processes() -> None:
    from siked_runtime.training import per_device_batch

    assert per_device_batch(TrainingSpec(batch_size=8), 2) == 4
    with pytest.raises(ValueError, match=r"training.batchSize \(6\) must be a multiple of the 4 training processes"):
        per_device_batch(TrainingSpec(batch_size=6), 4)


# --- qlora, gradient checkpointing, packing ----------------------------------------------------------


def test_qlora_is_refused_without_a_cuda_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from siked_runtime.training import check_hardware

    qlora = StudentSpec(model="builtin:tiny-random", finetune="qlora")
    with pytest.raises(ValueError, match="student.finetune: qlora needs a CUDA GPU"):
        check_hardware(qlora, "cpu")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # a GPU host without bitsandbytes
    with pytest.raises(ValueError, match="student.finetune: qlora needs bitsandbytes"):
        check_hardware(qlora, "cuda")
    check_hardware(StudentSpec(model="builtin:tiny-random", finetune="lora"), "cpu")


def test_the_train_stage_refuses_qlora_before_writing_anything(tmp_path: Path) -> None:
    from siked_runtime.stages.train import run_train
    from siked_runtime.storage import open_store

    store = open_store(tmp_path.as_uri())
    with pytest.raises(ValueError, match="student.finetune: qlora needs a CUDA GPU"):
        run_train(_spec(student={"finetune": "qlora"}), store, 0)  # the teacher stage has not even run
    assert not any(tmp_path.iterdir())


def test_gradient_checkpointing_reaches_the_trainer(tmp_path: Path) -> None:
    from siked_runtime.training import build_trainer

    rows = [{"prompt": "What is 2 + 3?", "completion": "[cot]\n2 + 3 = 5.\nAnswer: 5"}] * 4
    training = TrainingSpec(max_steps=1, batch_size=2, gradient_checkpointing=True)
    trainer = build_trainer("builtin:tiny-random", rows, StudentSpec(model="builtin:tiny-random", finetune="full"),
                            training, seed=0, output_dir=str(tmp_path))
    assert trainer.args.gradient_checkpointing and trainer.args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    trainer.train()  # the Trainer switches checkpointing on in the model when training starts
    assert trainer.model.is_gradient_checkpointing


def test_packing_is_off_on_cpu_with_the_reason() -> None:
    from siked_runtime.training import packing_plan

    on, why, attention = packing_plan(TrainingSpec(packing=True), "cpu")
    assert not on and why.startswith("cpu:") and attention is None
    assert packing_plan(TrainingSpec(packing=False), "cuda")[:2] == (False, "training.packing is false")
    on, why, attention = packing_plan(TrainingSpec(packing=True), "cuda")
    assert on and why is None and attention in ("flash_attention_2", "sdpa")


def test_sdpa_keeps_packed_sequences_apart() -> None:
    """What packing without FlashAttention relies on: transformers reads sequence starts from the
    position_ids of a flattened batch and masks attention across them (SDPA, no extra package).
    It does so without a KV cache only, as in training (TRL's loss passes use_cache=False)."""
    import torch
    from transformers import AutoModelForCausalLM

    from siked_runtime.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-random"), attn_implementation="sdpa")
    first, second = torch.arange(5, 12), torch.arange(40, 49)
    with torch.no_grad():
        alone = [model(input_ids=s[None], use_cache=False).logits[0] for s in (first, second)]
        packed = model(input_ids=torch.cat([first, second])[None], use_cache=False,
                       position_ids=torch.cat([torch.arange(7), torch.arange(9)])[None]).logits[0]
    torch.testing.assert_close(packed, torch.cat(alone), rtol=1e-4, atol=1e-4)


# --- real processes -------------------------------------------------------------------------------


def _rows(n: int = 16) -> list[dict]:
    from siked_runtime.strategies import build_prompt, format_solution

    rows = []
    for i in range(n):
        a, b = i + 2, 2 * i + 3
        rows.append({"prompt": build_prompt(f"Ann has {a} pens and gets {b} more. How many pens does she have?"),
                     "completion": format_solution("cot", f"{a} + {b} = {a + b}.", a + b)})
    return rows


def _training(strategy: str) -> TrainingSpec:
    # The global batch is 4 rows whatever the processes: 2 processes take 2 each.
    return TrainingSpec(max_steps=4, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, lr_scheduler="constant",
                        distributed={"strategy": strategy, "nprocPerNode": 2} if strategy != "none" else {})


def _train(out: Path, strategy: str) -> dict:
    from siked_runtime.training import train_sft

    # float32: on a CPU with native bf16, `auto` trains under bf16 autocast, whose rounding differs between
    # one process and two by more than the tolerance; the comparison is of the distribution, not of bf16.
    student = StudentSpec(model="builtin:tiny-random", finetune="full", dtype="float32")
    return train_sft("builtin:tiny-random", _rows(), out / "model", student, _training(strategy), seed=0,
                     on_log=lambda line: None)


def _worker(out: str, strategy: str) -> None:
    """One torchrun process: train, and rank 0 leaves the summary beside the model."""
    summary = _train(Path(out), strategy)
    if int(os.environ["RANK"]) == 0:
        (Path(out) / "summary.json").write_text(json.dumps(summary))


def _torchrun(out: Path, strategy: str) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(distributed.free_port()), __file__, str(out), strategy]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _train(tmp_path_factory.mktemp("single"), "none")


def _assert_loads_and_generates(path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(["What is 1 + 1?"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(strategy: str, single_process: dict,
                                                            tmp_path: Path) -> None:
    summary = _torchrun(tmp_path, strategy)
    assert summary["distributed"] == {"strategy": strategy, "world_size": 2, "nodes": 1, "backend": "gloo"}
    assert summary["per_device_batch_size"] == 2 and summary["global_batch_size"] == 4
    assert single_process["global_batch_size"] == 4 and summary["steps"] == single_process["steps"] == 4
    losses, reference = summary["loss_history"], single_process["loss_history"]
    assert len(losses) == 4 and losses[-1] < losses[0]  # it learned something
    assert losses == pytest.approx(reference, rel=LOSS_TOLERANCE)
    _assert_loads_and_generates(tmp_path / "model")


def _stored_run(tmp_path: Path, **changes) -> tuple[str, DistillationSpec]:
    """A smoke run (`changes` merged into its spec's sections) at a file:// URI, its spec stored and
    its teacher stage done."""
    from siked_runtime.graph import StageKey
    from siked_runtime.stages import run_stage
    from siked_runtime.storage import open_store

    uri = (tmp_path / "run").as_uri()
    manifest = load_manifest(REPO / "examples" / "smoke.yaml").to_manifest()
    for key, value in changes.items():
        manifest["spec"][key] = {**manifest["spec"].get(key, {}), **value}
    store = open_store(uri)
    store.put_text("spec.yaml", yaml.safe_dump(manifest, sort_keys=False))
    spec = DistillationSpec.model_validate(manifest["spec"])
    run_stage(spec, store, StageKey("teacher"))
    return uri, spec


@pytest.mark.slow
def test_siked_stage_train_under_torchrun_publishes_one_manifest(tmp_path: Path) -> None:
    from siked_runtime.storage import open_store, read_manifest

    uri, spec = _stored_run(tmp_path, training={"distributed": {"strategy": "ddp", "nprocPerNode": 2}})
    argv = distributed.torchrun_argv(spec, None, node_rank="0", master_addr="127.0.0.1",
                                     master_port=distributed.free_port(),
                                     stage_argv=[SIKED, "stage", "train", "--run-uri", uri, "--iteration", "0"])
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv[1:]], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"stage"')]
    assert [s["status"] for s in summaries] == ["succeeded", "succeeded"]
    # run_stage adds published_at where it publishes: in rank 0 only.
    assert sorted("published_at" in s["metrics"] for s in summaries) == [False, True]

    manifest = read_manifest(open_store(uri), "iter-000/train")
    assert manifest["distributed"] == {"strategy": "ddp", "world_size": 2, "nodes": 1, "backend": "gloo"}
    assert manifest["training"]["global_batch_size"] == 4 and manifest["packing"]["on"] is False
    _assert_loads_and_generates(tmp_path / "run" / "iter-000" / "train" / "model")


@pytest.mark.slow
def test_launch_local_names_the_failing_rank_and_its_exit_code(tmp_path: Path) -> None:
    from siked_jobs import EXIT_PERMANENT

    from siked_runtime.storage import open_store

    spec = _spec(training={"distributed": {"strategy": "ddp", "nprocPerNode": 2}})
    uri = (tmp_path / "run").as_uri()
    manifest = {"apiVersion": "siked.io/v1alpha1", "kind": "DistillationRun", "metadata": {"name": "smoke"},
                "spec": spec.model_dump(mode="json", by_alias=True)}
    open_store(uri).put_text("spec.yaml", yaml.safe_dump(manifest))
    # No teacher stage yet: every rank refuses train[0] as a permanent failure (siked_jobs' exit code 2).
    with pytest.raises(distributed.LaunchError, match=r"train\[0\] cannot run yet") as failure:
        distributed.launch_local(spec, uri, 0)
    assert failure.value.rank in (0, 1) and failure.value.exit_code == EXIT_PERMANENT
    assert f"rank {failure.value.rank} of 2 exited with code {EXIT_PERMANENT}" in str(failure.value)


if __name__ == "__main__":
    _worker(*sys.argv[1:])
