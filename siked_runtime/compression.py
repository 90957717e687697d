"""Token-level knowledge compression: keep a share S of a text's tokens, the informative ones.

    compressor = make_compressor("self-information", "builtin:smollm2-135m-instruct")
    compressor.compress("A dozen is 12. Equal groups: total = groups * size.", 0.5, keep={"12"})

`self-information` (Selective Context, Li et al. 2023) scores each token by its surprisal
−log p(token | text before it) under a causal LM (the student itself by default) and drops
the least informative words: a word's self-information is the sum of its tokens' (the
lexical units of Selective Context), and words are kept, most informative first, until
`share` of the text's tokens is reached.
Words holding a number in `keep` are kept first, whatever their score (the numbers a
solution needs). Line breaks and sentence-ending punctuation survive, so what is left
still reads as sentences. `llmlingua` hands the text to LLMLingua's `PromptCompressor`
when that package (and its model) is installed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch

COMPRESSORS = ("self-information", "llmlingua")
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?;:]+$")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def number_strings(text: str) -> set[str]:
    """The numbers written in `text`, as strings without thousands separators (\"1,200.\" → \"1200\")."""
    return {n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)}


class SelfInformationCompressor:
    def __init__(self, model_path: str, device: str | None = None):
        from siked_runtime.models import load_student

        self.model, self.tokenizer = load_student(model_path, dtype="float32", device=device or "cpu")
        self.model.eval()
        self._cache: dict[str, list[tuple[int, int, float]]] = {}

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    @torch.inference_mode()
    def token_information(self, text: str) -> list[tuple[int, int, float]]:
        """(start, end, surprisal in nats) per token of `text`; the first token scores the mean of the rest."""
        if text not in self._cache:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            if not ids:
                return []
            logits = self.model(torch.tensor([ids], device=self.model.device)).logits[0].float()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            info = (-logp.gather(1, torch.tensor(ids[1:], device=logp.device)[:, None])[:, 0]).tolist()
            first = sum(info) / len(info) if info else 0.0
            self._cache[text] = [(s, e, v) for (s, e), v in zip(enc["offset_mapping"], [first, *info])]
        return self._cache[text]

    def word_scores(self, text: str) -> list[tuple[str, float, int]]:
        """(word, self-information, tokens) for each whitespace-separated word of `text`."""
        tokens = self.token_information(text)
        out = []
        for m in _WORD.finditer(text):
            inside = [v for s, e, v in tokens if s < m.end() and e > m.start()]
            out.append((m.group(), sum(inside), max(len(inside), 1)))
        return out

    def compress(self, text: str, share: float, keep: Iterable[str] = ()) -> str:
        """`text` cut to about `share` of its tokens; words with a number in `keep` always stay."""
        if share >= 1.0 or not text.strip():
            return text
        if share <= 0.0:
            return ""
        words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
        wanted = {k.replace(",", "") for k in keep}
        scored = [(bool(wanted & number_strings(w)), info, i, n) for i, (w, info, n) in enumerate(self.word_scores(text))]
        # Word boundaries re-tokenize a little differently once neighbours are gone: shrink the
        # budget until the result itself is within the target.
        target = math.floor(share * len(self.token_information(text)) + 0.5)
        ranked = sorted(scored, key=lambda x: (not x[0], -x[1], x[2]))
        budget, out = target, text
        for _ in range(8):
            kept, used = set(), 0
            for forced, _, i, n in ranked:
                if forced or used + n <= budget:
                    kept.add(i)
                    used += n
            out = self._assemble(text, words, kept)
            over = self.count(out) - target
            if over <= 0 or budget <= 0:
                break
            budget -= over
        return out

    @staticmethod
    def _assemble(text: str, words: list[tuple[int, int, str]], kept: set[int]) -> str:
        """Kept words in order, one output line per input line; a sentence keeps its end mark."""
        lines: list[str] = []
        current: list[str] = []
        line_of = [text.count("\n", 0, start) for start, _, _ in words]
        for i, (_, _, word) in enumerate(words):
            if i in kept:
                current.append(word)
            elif (end := _SENTENCE_END.search(word)) and current and not _SENTENCE_END.search(current[-1]):
                current[-1] += end.group()
            last_in_line = i + 1 == len(words) or line_of[i + 1] != line_of[i]
            if last_in_line:
                if current:
                    lines.append(" ".join(current))
                current = []
        return "\n".join(lines)


class LLMLinguaCompressor:
    def __init__(self, model_name: str | None = None):
        try:
            from llmlingua import PromptCompressor
        except ImportError as err:
            raise ImportError(
                "the llmlingua compressor needs the llmlingua package and its model (pip install llmlingua); "
                "or use compressor self-information, which needs neither"
            ) from err
        kwargs = {"model_name": model_name} if model_name else {}
        self._compressor = PromptCompressor(device_map="cpu", **kwargs)

    def count(self, text: str) -> int:
        return len(self._compressor.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def compress(self, text: str, share: float, keep: Iterable[str] = ()) -> str:
        if share >= 1.0 or not text.strip():
            return text
        if share <= 0.0:
            return ""
        result = self._compressor.compress_prompt(text, rate=share, force_tokens=sorted(set(keep)))
        return result["compressed_prompt"]


def make_compressor(kind: str, student_model: str):
    if kind == "self-information":
        return SelfInformationCompressor(student_model)
    if kind == "llmlingua":
        return LLMLinguaCompressor()
    raise ValueError(f"unknown compressor {kind!r}; expected one of {', '.join(COMPRESSORS)}")
