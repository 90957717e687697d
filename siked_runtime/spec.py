"""The DistillationRun spec: one validated model for kubectl and the local runner.

    run = load_manifest("examples/quickstart.yaml")      # -> DistillationRun
    run.spec.iterations.max, run.spec.mixing.policy, ...

Field names are camelCase in YAML (Kubernetes convention) and snake_case in Python.
Every field has a type, a default and a description; the descriptions become the
CRD's openAPIV3Schema (see `siked_runtime.crd_schema`). Invalid input raises
`SpecError`, whose lines name the field path as written in the manifest:

    spec.mixing.alphaSchedule[2]: must be in [0, 1], got 1.4
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from siked_runtime.strategies import STRATEGIES

API_VERSION = "siked.io/v1alpha1"
KIND = "DistillationRun"


class Spec(BaseModel):
    """Base for every spec section: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, use_enum_values=True
    )


class Method(str, Enum):
    siked = "siked"
    distill = "distill"
    skintern = "skintern"


class TeacherKind(str, Enum):
    oracle = "oracle"
    gold = "gold"
    openai = "openai"
    local = "local"
    vllm = "vllm"


class MixingPolicy(str, Enum):
    all = "all"
    adaptive = "adaptive"
    self = "self"
    alpha = "alpha"
    teacher = "teacher"


class Finetune(str, Enum):
    lora = "lora"
    qlora = "qlora"
    full = "full"


class DistributedStrategy(str, Enum):
    none = "none"
    ddp = "ddp"
    fsdp = "fsdp"


class Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class SamplerBackend(str, Enum):
    transformers = "transformers"
    vllm = "vllm"


class DatasetFormat(str, Enum):
    gsm8k = "gsm8k"
    svamp = "svamp"
    asdiv = "asdiv"
    multiarith = "multiarith"
    synthetic = "synthetic"


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def label_value_problem(value: str) -> str | None:
    """Why `value` cannot be a Kubernetes label value (None when it can)."""
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return (f"must be a label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
                f"letter or digit), got {value!r}")
    return None


def label_key_problem(key: str) -> str | None:
    """Why `key` cannot be a label or annotation key: an optional DNS-1123 subdomain prefix and a name."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"key prefix must be a DNS-1123 subdomain, got {key!r}"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return f"key must be a name of at most 63 letters, digits, '-', '_' or '.' (optionally prefix/name), got {key!r}"
    return None


def _check_labels(labels: dict[str, str] | None, values: bool = True) -> dict[str, str] | None:
    for key, value in (labels or {}).items():
        problem = label_key_problem(key) or (label_value_problem(value) if values else None)
        if problem:
            raise ValueError(problem)
    return labels
_URI = re.compile(r"^(file://|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/|$))")


# --- engines and shards ----------------------------------------------------------------


class VllmEngineSpec(Spec):
    """vLLM engine settings (sampling.backend `vllm`, teacher.kind `vllm`)."""

    tensor_parallel_size: int | None = Field(
        None, ge=1, le=64, description="GPUs the model is sharded over (tensor parallelism); default: the stage's GPUs "
        "(resources.<stage>.gpus), 1 without GPUs.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Share of each GPU's memory vLLM may take (weights, activations, KV cache).")
    max_model_len: int | None = Field(
        None, ge=32, le=1_048_576, description="Context length the engine reserves KV cache for; default: the "
        "student's maxSeqLength when sampling, the model's own limit for the teacher.")
    max_num_seqs: int | None = Field(
        None, ge=1, le=65536, description="Sequences decoded at once (vLLM's default when unset).")
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture: faster start, slower decoding.")


Shards = Annotated[int, Field(ge=1, le=1024)]
SHARDS_DESCRIPTION = (
    "Split the stage's questions into this many parts. On Kubernetes the stage is an Indexed Job with one pod per "
    "part, each retried alone (backoffLimitPerIndex = backoffLimit); locally the parts run side by side. Every "
    "question is handled by exactly one part, and the stage is done once every part is.")


# --- teacher and student ---------------------------------------------------------------


class SecretKeyRef(Spec):
    name: str = Field(description="Name of a Secret in the run's namespace.", min_length=1)
    key: str = Field(description="Key inside the Secret.", min_length=1)


class TeacherPricing(Spec):
    input_per_million: float = Field(ge=0.0, description="Price of one million prompt tokens.")
    output_per_million: float = Field(ge=0.0, description="Price of one million completion tokens.")
    currency: str = Field("USD", min_length=1, max_length=8, description="Currency the prices are in.")


class TeacherSpec(Spec):
    kind: TeacherKind = Field(
        TeacherKind.oracle,
        description="Where teacher solutions come from: `oracle` (synthetic problems, offline), `gold` (dataset "
        "annotations, offline), `openai` (any OpenAI-compatible endpoint), `local`/`vllm` (a model served in the stage).",
    )
    model: str | None = Field(None, description="Model name (openai) or Hugging Face id / path (local, vllm).")
    endpoint: str | None = Field(None, description="Base URL of an OpenAI-compatible API, e.g. http://vllm:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    api_key_secret: SecretKeyRef | None = Field(None, description="Secret mounted as `apiKeyEnv` in the teacher Job.")
    max_concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight at once.")
    max_retries: int = Field(5, ge=0, le=100, description="Retries on 429, 5xx and timeouts, with backoff.")
    timeout_seconds: float = Field(120.0, gt=0, description="Per-request timeout.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature of the teacher.")
    samples_per_strategy: int = Field(1, ge=1, le=64, description="Solutions requested per question and strategy.")
    max_correct_per_strategy: int = Field(
        1, ge=1, le=64, description="Keep at most this many verified-correct solutions per question and strategy (m)."
    )
    max_tokens: int = Field(512, ge=16, le=32768, description="Token limit per teacher solution.")
    requests_per_minute: int | None = Field(
        None, ge=1, description="openai: at most this many requests start per minute (unset: no limit).")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="openai: at most this many tokens (prompt + completion) per minute (unset: no limit).")
    max_failure_share: Probability = Field(
        0.05, description="openai: share of question × strategy requests that may fail after all retries (counted "
        "in the manifest, not kept); past it the stage fails with the reason.")
    pricing: TeacherPricing | None = Field(
        None, description="openai: prices per million tokens; the manifest and report then show the cost.")
    vllm: VllmEngineSpec = Field(default_factory=VllmEngineSpec, description="Engine settings when kind is `vllm`.")
    shards: Shards = Field(1, description=SHARDS_DESCRIPTION)

    @model_validator(mode="after")
    def _needs_model(self) -> TeacherSpec:
        if self.kind in (TeacherKind.openai, TeacherKind.local, TeacherKind.vllm) and not self.model:
            raise ValueError(f".model is required when teacher.kind is {self.kind!r}")
        if self.kind == TeacherKind.openai and not self.endpoint:
            raise ValueError(".endpoint is required when teacher.kind is 'openai'")
        return self


class LoraSpec(Spec):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="Module names to adapt, or ['all-linear'].",
    )


class StudentSpec(Spec):
    model: str = Field(
        description="Hugging Face id or path of the student; `builtin:smollm2-135m-instruct` is the packaged "
        "SmolLM2-135M-Instruct, `builtin:tiny-random` a tiny randomly initialised model for smoke tests.",
        min_length=1,
    )
    finetune: Finetune = Field(
        Finetune.lora, description="`lora` (merged after training), `qlora` (LoRA on a 4-bit NF4 base via "
        "bitsandbytes; needs a CUDA GPU) or `full` fine-tuning.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings when finetune is `lora`.")
    dtype: Dtype = Field(Dtype.auto, description="Weights dtype; `auto` is bf16 where the hardware has native bf16 (GPUs; CPUs with "
        "AVX512-BF16/AMX for generation and mixed-precision training), else fp32. bf16 generation depends on the "
        "batch: a question's samples and greedy answers change with the questions beside it (and so with "
        "batch sizes and shards); `float32` generates the same in any batch.")
    max_seq_length: int = Field(512, ge=32, le=131072, description="Prompt + completion token limit.")


# --- data --------------------------------------------------------------------------------


class SyntheticSpec(Spec):
    n: int = Field(400, ge=1, le=10_000_000, description="Number of generated problems.")
    seed: int = Field(0, ge=0, description="Generator seed; distinct seeds give disjoint problem sets.")
    families: list[str] | None = Field(None, description="Problem families to draw from (all when unset).")


class DatasetSpec(Spec):
    name: str = Field(description="Name used in reports and metrics, e.g. `gsm8k-test`.", min_length=1, max_length=63)
    source: str = Field(
        description="`synthetic`, a local path, `file://…`, `s3://bucket/key` or `hf://repo[/config]:split`.",
        min_length=1,
    )
    format: DatasetFormat | None = Field(None, description="File format; detected from the content when unset.")
    limit: int | None = Field(None, ge=1, description="Use at most this many records (the first ones).")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec, description="Generator settings for `synthetic`.")

    @field_validator("name")
    @classmethod
    def _label(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9_.]*[a-z0-9])?", v):
            raise ValueError(f"must be lowercase letters, digits, '-', '_' or '.', got {v!r}")
        if v == "validation":
            raise ValueError("'validation' is reserved for the validation split")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else None
        if scheme not in (None, "file", "s3", "hf"):
            raise ValueError(f"unsupported scheme {scheme + '://'!r} in {v!r}; use a path, file://, s3:// or hf://")
        return v


class DatasetsSpec(Spec):
    train: DatasetSpec = Field(description="Training questions (teacher solves them, the student samples on them).")
    validation: DatasetSpec | None = Field(None, description="Validation set; carved from train when unset.")
    validation_from_train: float = Field(
        0.1, gt=0, description="Validation split carved from train: a fraction in (0, 1) or a count ≥ 1."
    )
    eval: list[DatasetSpec] = Field(default_factory=list, description="Held-out sets reported each iteration.")

    @field_validator("validation_from_train")
    @classmethod
    def _split(cls, v: float) -> float:
        if v >= 1 and not float(v).is_integer():
            raise ValueError(f"must be a fraction in (0, 1) or a whole count, got {v}")
        return v

    @model_validator(mode="after")
    def _unique(self) -> DatasetsSpec:
        names = [d.name for d in self.eval]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f".eval names must be unique, repeated: {', '.join(dupes)}")
        return self


# --- the loop ----------------------------------------------------------------------------


class EarlyStoppingSpec(Spec):
    patience: int | None = Field(
        2, ge=1, description="Stop after this many iterations without validation improvement (unset: never)."
    )
    min_delta: float = Field(0.0, ge=0.0, le=1.0, description="Smallest validation gain that counts as improvement.")


class IterationsSpec(Spec):
    max: int = Field(3, ge=0, le=100, description="Last self-guided iteration; 0 trains on teacher data only.")
    samples_per_question: int = Field(4, ge=1, le=256, description="Student samples per training question (k).")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Student sampling temperature.")
    max_correct_per_question: int = Field(
        2, ge=1, le=256, description="Keep at most this many correct self-samples per question (m)."
    )
    adaptive_budget: bool = Field(
        True, description="Sample one at a time and stop a question once it has m correct samples; spend the budget "
        "saved on questions with some but fewer than m correct (up to 2k each).",
    )
    give_up_after: int | None = Field(
        None, ge=1, le=256, description="With adaptiveBudget, stop sampling a question after this many samples without "
        "a correct one (unset: k, the same effort as fixed k).",
    )
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec, description="Early stopping.")
    target_accuracy: float | None = Field(
        None, gt=0.0, le=1.0, description="End the run once validation accuracy reaches this."
    )
    regression_tolerance: float = Field(
        0.02, ge=0.0, le=1.0, description="A validation drop larger than this flags the iteration as a regression."
    )


class SamplingSpec(Spec):
    backend: SamplerBackend = Field(SamplerBackend.transformers, description="Generation backend.")
    batch_size: int = Field(32, ge=1, le=65536, description="Prompts per generation batch.")
    max_new_tokens: int = Field(256, ge=8, le=32768, description="Token limit per sampled solution.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling threshold (the paper's: 0.95).")
    vllm: VllmEngineSpec = Field(default_factory=VllmEngineSpec, description="Engine settings when backend is `vllm`.")
    shards: Shards = Field(1, description=SHARDS_DESCRIPTION)


class MixingSpec(Spec):
    policy: MixingPolicy = Field(
        MixingPolicy.all,
        description="`all` teacher ∪ self; `adaptive` self ∪ teacher rows of unsolved questions; `self` self only; "
        "`alpha` teacher rows subsampled to the scheduled share α; `teacher` teacher rows only (combined distillation "
        "continued, a baseline: no sampling).",
    )
    priority: list[str] | None = Field(
        None, description="Keep one row per question, the first strategy of this order that has one (the paper's "
        "lineage, e.g. [pot, cot, l2m]), for teacher data and after every mixing; the student's own row wins within a "
        "strategy. Unset: every row.",
    )
    alpha_schedule: list[Probability] = Field(
        default_factory=list,
        description="α_t (teacher rows / all rows) for iterations 1, 2, …; the last value repeats.",
    )
    dedupe: bool = Field(True, description="Drop duplicate (question, completion) rows.")
    max_per_question: int | None = Field(None, ge=1, description="Cap on training rows per question.")

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for i, s in enumerate(v):
            if s not in STRATEGIES:
                raise ValueError(f"[{i}] unknown strategy {s!r}; expected one of {', '.join(STRATEGIES)}")
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must list strategies once each, got {v}")
        return v

    @model_validator(mode="after")
    def _schedule(self) -> MixingSpec:
        if self.policy == MixingPolicy.alpha and not self.alpha_schedule:
            raise ValueError(".alphaSchedule is required when mixing.policy is 'alpha'")
        return self


class DistributedSpec(Spec):
    strategy: DistributedStrategy = Field(
        DistributedStrategy.none, description="`ddp` (a model replica per process, gradients all-reduced), `fsdp` "
        "(parameters, gradients and optimizer state fully sharded: full fine-tuning of large students) or `none` "
        "(one process). Processes are started with torchrun.")
    nproc_per_node: int | None = Field(
        None, ge=1, le=64, description="Processes per node; default: the train stage's GPUs (resources.train.gpus), "
        "1 without GPUs (set it to run several CPU processes with the gloo backend).")
    nodes: int = Field(
        1, ge=1, le=256, description="Nodes; more than one makes the train stage an Indexed Job with one pod per node "
        "and a headless Service for the rendezvous.")
    port: int = Field(29500, ge=1024, le=65535, description="Rendezvous port of the first process.")

    @model_validator(mode="after")
    def _needs_strategy(self) -> DistributedSpec:
        if self.strategy == DistributedStrategy.none and (self.nodes > 1 or (self.nproc_per_node or 1) > 1):
            raise ValueError(".strategy must be ddp or fsdp to train on more than one process")
        return self


class TrainingSpec(Spec):
    epochs: float = Field(2.0, gt=0, le=1000, description="Epochs per iteration.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(
        8, ge=1, le=65536, description="Rows per micro-step summed over all training processes: each of W processes "
        "(training.distributed) takes batchSize / W, so batchSize must be a multiple of W. The global batch, "
        "batchSize × gradientAccumulation, does not change with the number of processes.")
    gradient_accumulation: int = Field(1, ge=1, le=4096, description="Gradient accumulation steps.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps per iteration; overrides epochs.")
    iteration0_steps: int | None = Field(
        None, ge=1, description="Optimizer steps of iteration 0 (teacher rows, from the base model); unset: as every "
        "iteration (maxSteps or epochs). Self-guidance needs a student that already solves part of the training "
        "questions when it samples, so iteration 0 usually trains longer than the iterations that refine it. "
        "SKIntern's stages keep skintern.epochsPerStage.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of steps for linear warm-up.")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="AdamW weight decay.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name: cosine, linear, constant, …")
    packing: bool = Field(True, description="Padding-free packed batches where the model supports it.")
    batch_by_question: bool = Field(
        False, description="Shuffle questions, not rows: every row of a question (one per strategy) lands in the same "
        "batch, so each step sees the data's own strategy mix (question_batches.py). Use a batchSize that is a "
        "multiple of the number of strategies.")
    continue_from_previous: bool = Field(True, description="Iteration t ≥ 1 starts from iteration t-1's weights.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about a third more compute.")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description="Multi-process training.")

    def for_iteration(self, iteration: int) -> TrainingSpec:
        """The training settings of iteration `iteration`: iteration 0 takes `iteration0Steps` where set."""
        if iteration == 0 and self.iteration0_steps is not None:
            return self.model_copy(update={"max_steps": self.iteration0_steps, "iteration0_steps": None})
        return self

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        allowed = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {v!r}")
        return v


class EvaluationSpec(Spec):
    baseline: bool = Field(True, description="Score the untrained student once, as the report's baseline.")
    teacher: bool = Field(False, description="Score the teacher once on the same sets.")
    batch_size: int = Field(32, ge=1, le=65536, description="Prompts per greedy-decoding batch.")
    max_new_tokens: int = Field(256, ge=8, le=32768, description="Token limit per answer.")
    shards: Shards = Field(1, description=SHARDS_DESCRIPTION)
    dtype: Dtype = Field(Dtype.auto, description="Weights dtype of evaluation (and the pilot); `auto` is "
        "`student.dtype`'s. `float32` gives every question the same answer in any batch and shard, where bf16 "
        "training or sampling is wanted for speed.")


class SandboxLayer(str, Enum):
    """Isolation layers of the PoT sandbox (siked_runtime.verification.policy says what each does)."""

    seccomp = "seccomp"
    landlock = "landlock"
    netns = "netns"
    nondumpable = "nondumpable"
    no_new_privs = "no_new_privs"
    rlimits = "rlimits"
    separate_uid = "separate_uid"


SANDBOX_LAYERS: tuple[str, ...] = tuple(layer.value for layer in SandboxLayer)


class VerificationSpec(Spec):
    timeout_seconds: float = Field(3.0, gt=0, le=600, description="Wall-clock limit per PoT program.")
    memory_mb: int = Field(256, ge=64, le=65536, description="Address-space limit per PoT program process.")
    require_layers: list[SandboxLayer] = Field(
        default_factory=lambda: [SandboxLayer.seccomp.value],
        description="Sandbox layers without which a verifying stage refuses to start "
                    "(`siked verify --explain-sandbox` shows what a machine has).",
    )


class Schedule(str, Enum):
    linear = "linear"
    exponential = "exponential"
    inverse_exponential = "inverse-exponential"


class InternalizationSpec(Spec):
    stages: int = Field(4, ge=1, le=32, description="SKIntern stages T (the paper's best: 4).")
    schedule: Schedule | list[Probability] = Field(
        Schedule.linear, description="Share S_t of knowledge kept per stage, or an explicit list of T shares."
    )
    examples: int = Field(2, ge=0, le=32, description="Similar examples K in the prompt at S_t = 1.")
    epochs_per_stage: float = Field(3.0, gt=0, le=1000, description="Epochs per stage.")
    compressor: str = Field(
        "self-information", description="`self-information` (the student's surprisal) or `llmlingua`."
    )
    retriever: str = Field("tfidf", description="`tfidf`, `bm25` or `embedding` (all-MiniLM-L6-v2) for examples.")
    reference: bool = Field(
        True, description="Method skintern: also train standard distillation for as many epochs (stage `reference`) "
        "and measure the prompt tokens of knowledge-augmented inference."
    )

    @field_validator("compressor")
    @classmethod
    def _compressor(cls, v: str) -> str:
        if v not in ("self-information", "llmlingua"):
            raise ValueError(f"must be self-information or llmlingua, got {v!r}")
        return v

    @field_validator("retriever")
    @classmethod
    def _retriever(cls, v: str) -> str:
        if v not in ("tfidf", "bm25", "embedding"):
            raise ValueError(f"must be tfidf, bm25 or embedding, got {v!r}")
        return v

    @model_validator(mode="after")
    def _explicit(self) -> InternalizationSpec:
        if isinstance(self.schedule, list) and len(self.schedule) != self.stages:
            raise ValueError(f".schedule needs {self.stages} shares (one per stage), got {len(self.schedule)}")
        return self


# --- where it runs ---------------------------------------------------------------------------


class Toleration(Spec):
    key: str | None = Field(None, description="Taint key.")
    operator: str | None = Field(None, description="`Exists` or `Equal`.")
    value: str | None = Field(None, description="Taint value.")
    effect: str | None = Field(None, description="`NoSchedule`, `PreferNoSchedule` or `NoExecute`.")
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is tolerated.")


class ResourceSpec(Spec):
    gpus: int | None = Field(None, ge=0, le=64, description="nvidia.com/gpu per stage Job.")
    cpu: str | None = Field(None, description="CPU request, a Kubernetes quantity (e.g. `4`, `500m`).")
    memory: str | None = Field(None, description="Memory request, a Kubernetes quantity (e.g. `16Gi`).")
    node_selector: dict[str, str] | None = Field(None, description="Node labels the Job's pods must match.")
    tolerations: list[Toleration] | None = Field(None, description="Tolerations for tainted (e.g. GPU) nodes.")
    priority_class_name: str | None = Field(None, description="PriorityClass of the Job's pods.")
    queue_name: str | None = Field(
        None, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name).",
        json_schema_extra={"maxLength": 63, "pattern": _LABEL_VALUE.pattern})
    ephemeral_storage: str | None = Field(
        None, description="Local disk per stage Job, a Kubernetes quantity: the container's ephemeral-storage "
                          "request and limit, and the size of its /scratch volume.")

    @field_validator("cpu", "memory", "ephemeral_storage")
    @classmethod
    def _quantity(cls, v: str | None) -> str | None:
        if v is not None and not _QUANTITY.match(v):
            raise ValueError(f"must be a Kubernetes quantity such as '4', '500m' or '16Gi', got {v!r}")
        return v

    @field_validator("queue_name")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        problem = None if v is None else label_value_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _check_labels(v)


class ResourcesSpec(Spec):
    default: ResourceSpec = Field(default_factory=ResourceSpec, description="Applies to every stage.")
    teacher: ResourceSpec | None = Field(None, description="Overrides for the teacher stage.")
    sample: ResourceSpec | None = Field(None, description="Overrides for sampling stages.")
    train: ResourceSpec | None = Field(None, description="Overrides for training stages.")
    eval: ResourceSpec | None = Field(None, description="Overrides for evaluation stages.")

    def for_stage(self, stage: str) -> ResourceSpec:
        """The default resources with the stage's overrides on top (a new object)."""
        overrides = getattr(self, stage, None) if stage in ("teacher", "sample", "train", "eval") else None
        if overrides is None:
            return self.default
        merged = self.default.model_dump(exclude_none=True) | overrides.model_dump(exclude_none=True)
        return ResourceSpec(**merged)


Manifest = dict[str, Any]  # a Kubernetes object fragment, checked by the API server (e.g. a Volume)


class PodOverrides(Spec):
    labels: dict[str, str] | None = Field(None, description="Labels of the stage pods.")
    annotations: dict[str, str] | None = Field(None, description="Annotations of the stage pods (e.g. Istio's).")
    env: list[Manifest] | None = Field(None, description="Extra environment variables (Kubernetes EnvVar).")
    volumes: list[Manifest] | None = Field(None, description="Extra pod volumes (Kubernetes Volume), e.g. a PVC cache.")
    volume_mounts: list[Manifest] | None = Field(
        None, description="Where the stage container mounts them (Kubernetes VolumeMount).")
    image_pull_secrets: list[str] | None = Field(None, description="Secrets for pulling the stage image.")
    affinity: Manifest | None = Field(None, description="Pod affinity (Kubernetes Affinity).")
    runtime_class_name: str | None = Field(None, description="RuntimeClass of the stage pods (e.g. `nvidia`).")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _check_labels(v)

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _check_labels(v, values=False)

    @field_validator("env", "volumes", "volume_mounts")
    @classmethod
    def _named(cls, v: list[Manifest] | None) -> list[Manifest] | None:
        for i, item in enumerate(v or []):
            if not isinstance(item.get("name"), str) or not item["name"]:
                raise ValueError(f"[{i}] needs a name, got {item!r}")
        return v

    @field_validator("volumes")
    @classmethod
    def _volume_names(cls, v: list[Manifest] | None) -> list[Manifest] | None:
        for i, item in enumerate(v or []):
            if not _DNS_LABEL.match(item["name"]) or len(item["name"]) > 63:
                raise ValueError(f"[{i}].name must be a DNS-1123 label, got {item['name']!r}")
            if item["name"] in ("scratch", "dshm", "tmp"):
                raise ValueError(f"[{i}].name {item['name']!r} is the stage's own volume")
        return v

    @field_validator("image_pull_secrets", "runtime_class_name")
    @classmethod
    def _names(cls, v: Any) -> Any:
        for name in [v] if isinstance(v, str) else v or []:
            if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
                raise ValueError(f"must be DNS-1123 names, got {name!r}")
        return v


class PodTemplateSpec(PodOverrides):
    stages: dict[str, PodOverrides] | None = Field(
        None, description="Per-stage additions (teacher, sample, train, eval, …) on top of the fields above.")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: dict[str, PodOverrides] | None) -> dict[str, PodOverrides] | None:
        from siked_runtime.graph import STAGES

        for stage in v or {}:
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        return v


class StorageSpec(Spec):
    uri: str | None = Field(
        None, description="Run prefix: `s3://bucket/prefix` or `file:///path`; the local runner defaults to ./runs/<name>."
    )
    endpoint: str | None = Field(None, description="S3 endpoint URL for MinIO/Ceph; AWS when unset.")
    secret_ref: str | None = Field(
        None, description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, injected into stage Jobs."
    )
    delete_on_run_deletion: bool = Field(False, description="Delete the run's artifacts when the run is deleted.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and not _URI.match(v):
            raise ValueError(f"must start with file:// or s3://<bucket>, got {v!r}")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        return v


# --- the whole run ---------------------------------------------------------------------------


class DistillationSpec(Spec):
    """Everything a DistillationRun needs; only `student` has no default."""

    method: Method = Field(Method.siked, description="`siked` (iterative), `distill` (one pass), `skintern`.")
    teacher: TeacherSpec = Field(default_factory=TeacherSpec, description="Teacher that writes solutions.")
    student: StudentSpec = Field(description="Student model and how it is fine-tuned.")
    strategies: list[str] = Field(
        default_factory=lambda: list(STRATEGIES), min_length=1, description="Strategies the teacher writes."
    )
    datasets: DatasetsSpec = Field(
        default_factory=lambda: DatasetsSpec(train=DatasetSpec(name="synthetic-train", source="synthetic")),
        description="Training, validation and evaluation data.",
    )
    iterations: IterationsSpec = Field(default_factory=IterationsSpec, description="The self-guided loop.")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="Student sampling.")
    mixing: MixingSpec = Field(default_factory=MixingSpec, description="How teacher and self data are mixed.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Fine-tuning hyper-parameters.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation settings.")
    verification: VerificationSpec = Field(
        default_factory=VerificationSpec, description="The PoT sandbox: limits and the isolation layers required."
    )
    internalization: InternalizationSpec | None = Field(
        None, description="SKIntern schedule: used by method `skintern`, or inside each SIKeD iteration's training."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Per-stage Job resources.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Where artifacts live.")
    image: str | None = Field(None, description="Container image of stage Jobs (the operator's default when unset).")
    image_pull_policy: str | None = Field(None, description="`Always`, `IfNotPresent` or `Never`.")
    pod_template: PodTemplateSpec = Field(
        default_factory=PodTemplateSpec, description="Additions to every stage pod (and per stage).")
    suspend: bool = Field(
        False, description="Pause the run: the running stage Job is deleted (its GPUs freed) and restarts on resume.")
    backoff_limit: int = Field(3, ge=0, le=100, description="Retries of a failed stage Job before the run fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Wall-clock limit for the whole run.")
    pending_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the run when a stage's pod has not started this long after its Job was "
                                "admitted (unschedulable, image pull, missing Secret), with the pod's reason.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete finished stage Jobs after this.")
    seed: int = Field(0, ge=0, description="Seed for splits, sampling and training.")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        for i, s in enumerate(v):
            if s not in STRATEGIES:
                raise ValueError(f"[{i}] unknown strategy {s!r}; expected one of {', '.join(STRATEGIES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"strategies must not repeat, got {v}")
        return v

    @field_validator("image_pull_policy")
    @classmethod
    def _pull(cls, v: str | None) -> str | None:
        if v is not None and v not in ("Always", "IfNotPresent", "Never"):
            raise ValueError(f"must be Always, IfNotPresent or Never, got {v!r}")
        return v

    @property
    def last_iteration(self) -> int:
        """Index of the last planned iteration (before early stopping)."""
        if self.method == Method.distill:
            return 0
        if self.method == Method.skintern:
            return self.skintern.stages - 1
        return self.iterations.max

    @property
    def internalizes(self) -> bool:
        """Whether training follows a SKIntern schedule (method skintern, or SIKeD with `internalization`)."""
        return self.method == Method.skintern or self.internalization is not None

    @property
    def skintern(self) -> InternalizationSpec:
        """The SKIntern schedule in force: the spec's, or the paper's defaults."""
        return self.internalization or InternalizationSpec()

    def alpha_for(self, iteration: int) -> float | None:
        """The scheduled α for iteration ≥ 1 under the `alpha` policy, else None."""
        if self.mixing.policy != MixingPolicy.alpha or iteration < 1:
            return None
        schedule = self.mixing.alpha_schedule
        return schedule[min(iteration, len(schedule)) - 1]


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _DNS_SUBDOMAIN.match(v):
            raise ValueError(f"must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.'), got {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _labels(cls, data: Any) -> Any:
        # Labels stay an extra field (a manifest without them dumps without them), but must be valid.
        if isinstance(data, dict) and isinstance(data.get("labels"), dict):
            _check_labels(data["labels"])
        return data


class DistillationRun(BaseModel):
    """A whole manifest: apiVersion, kind, metadata, spec."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    api_version: str = Field(API_VERSION)
    kind: str = Field(KIND)
    metadata: ObjectMeta
    spec: DistillationSpec

    @field_validator("api_version")
    @classmethod
    def _api(cls, v: str) -> str:
        if v != API_VERSION:
            raise ValueError(f"must be {API_VERSION!r}, got {v!r}")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v != KIND:
            raise ValueError(f"must be {KIND!r}, got {v!r}")
        return v

    def to_manifest(self) -> dict[str, Any]:
        """The resolved manifest (all defaults filled in), as saved next to every run.

        Nulls are kept: an explicit `patience: null` differs from the default and must survive a reload.
        """
        return self.model_dump(mode="json", by_alias=True)


# --- loading and errors ----------------------------------------------------------------------


class SpecError(ValueError):
    """An invalid manifest. `problems` holds one "path: reason" line per error."""

    def __init__(self, problems: list[str], source: str = "manifest"):
        self.problems = problems
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  {p}" for p in problems))


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "union[", "enum[", "literal[")) or part in ("list[str]",):
            continue  # pydantic's names for union members, not fields
        else:
            out += ("." if out else "") + part
    return out


def _reason(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("missing",):
        return "required field is missing"
    if err["type"] == "extra_forbidden":
        return "unknown field"
    shown = err.get("input")
    if err["type"] not in ("value_error", "assertion_error") and not isinstance(shown, (dict, list)):
        msg = f"{msg}, got {shown!r}"
    return msg


def format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for err in exc.errors():
        path = _path(tuple(err["loc"]))
        msg = _reason(err)
        if msg.startswith((".", "[")) and " " in msg:
            # A validator naming the exact field or item it rejects: ".model is required…", "[1] unknown…"
            where, msg = msg.split(" ", 1)
            path += where
        full = ".".join(p for p in (prefix, path) if p)
        problems.append(f"{full}: {msg}" if full else msg)
    return problems


def parse_manifest(data: Any, source: str = "manifest") -> DistillationRun:
    """Validate a manifest that has already been parsed from YAML/JSON."""
    if not isinstance(data, dict):
        raise SpecError([f"a manifest must be a mapping, got {type(data).__name__}"], source)
    try:
        return DistillationRun.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_errors(exc), source) from None


def load_manifest(path_or_text: str | Path) -> DistillationRun:
    """Load and validate a DistillationRun YAML manifest from a file path or YAML text."""
    if isinstance(path_or_text, Path) or ("\n" not in str(path_or_text) and Path(str(path_or_text)).exists()):
        path = Path(path_or_text)
        text, source = path.read_text(), str(path)
    else:
        text, source = str(path_or_text), "manifest"
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError([f"not valid YAML: {exc}"], source) from None
    runs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(docs) == 1:
        runs = docs
    if len(runs) != 1:
        raise SpecError([f"expected exactly one {KIND} document, found {len(runs)}"], source)
    return parse_manifest(runs[0], source)


def validate_spec(spec: dict[str, Any]) -> DistillationSpec:
    """Validate a bare `spec` mapping (as the operator receives it); errors are prefixed with `spec.`."""
    try:
        return DistillationSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(format_errors(exc, prefix="spec"), "spec") from None
