"""Math word-problem datasets as normalised records.

Every loader returns plain dicts of one shape:

    {"id": "gsm8k-test-00000", "question": "...", "answer": "18", "meta": {...}}

`answer` is the canonical numeric string (`answers.format_number`: "72", "0.5",
"-3"); a dataset answer that is not a number (ASDiv has "yes", "1:2") keeps its
raw text and sets `meta["numeric"] = False`.

    from siked_runtime.datasets import load_records, split_validation

    test = load_records("../shared/data/gsm8k/test.jsonl")              # format detected
    svamp = load_records("s3://bucket/svamp/SVAMP.json", limit=100)
    hub = load_records("hf://openai/gsm8k/main:test")                   # needs network
    train, val = split_validation(load_records("train.jsonl"), size=0.1, seed=0)

Sources: a local path, `file://…`, `s3://…` (through `siked_runtime.storage`), or
`hf://<owner>/<name>[/<config>]:<split>` (through the `datasets` library). Gzipped
files are read transparently.

Formats (`FORMATS`), detected from the file name and content when not given:

* `gsm8k` — JSONL of `{question, answer}`; the answer is a solution with
  `<<48/2=24>>` calculator notes and a final `#### 72` line. The socratic variant
  (`sub-question ** step` lines) is recognised per record and its sub-questions
  kept in `meta["subquestions"]` as `[question, step]` pairs; `meta["solution"]`
  is always the plain solution, without sub-questions and the `####` line.
* `svamp` — JSON list of `{ID, Body, Question, Equation, Answer, Type}`.
* `asdiv` — XML of `<Problem ID=…>` with `<Body>`, `<Question>`, `<Answer>`, `<Formula>`.
* `multiarith` — JSON list of `{iIndex, sQuestion, lEquations, lSolutions}`.
* `synthetic` — JSONL written by `siked_runtime.synthetic` (records with `meta.graph`).
* `records` — JSONL of already-normalised records (what `dump_jsonl` writes).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Iterable

from siked_runtime.answers import format_number, parse_number

FORMATS: tuple[str, ...] = ("gsm8k", "svamp", "asdiv", "multiarith", "synthetic", "records")


class DatasetError(ValueError):
    """A dataset file that cannot be read as the format it claims; the message says where."""


# --- reading bytes -------------------------------------------------------------------------------


def _read_source(source: str) -> bytes:
    if source.startswith("s3://"):
        # Imported here so that local use needs neither boto3 nor credentials.
        from siked_runtime import storage

        return storage.read_bytes(source)
    path = Path(source[len("file://"):]) if source.startswith("file://") else Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise DatasetError(f"{source}: is a directory, expected a dataset file") from None


def _display_name(source: str) -> str:
    """`gsm8k/test.jsonl` for any path or URI: short enough for an error message, long enough to find the file."""
    parts = [p for p in re.split(r"[/\\]", source.split("://", 1)[-1]) if p]
    return "/".join(parts[-2:]) if parts else source


def _stem(source: str) -> str:
    name = _display_name(source).rsplit("/", 1)[-1]
    for suffix in (".gz", ".jsonl", ".json", ".xml"):
        name = name.removesuffix(suffix)
    return name


def _decode(data: bytes, name: str) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{name}: not UTF-8 text ({err})") from None


# --- answers -------------------------------------------------------------------------------------

# A plain number, as datasets state answers: "72", "-3", "1,234.5", "3/4".
_PLAIN_NUMBER = re.compile(r"[-−]?\$?\s*(\d{1,3}(,\d{3})+|\d+)(\.\d+)?(\s*/\s*\d+)?\s*%?")


def canonical_answer(value: Any) -> tuple[str, bool]:
    """(answer text, is it numeric): numbers in canonical form, anything else as trimmed text."""
    if isinstance(value, bool):
        return str(value).lower(), False
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return str(value), False
        return format_number(float(value)), True
    text = str(value).strip()
    if _PLAIN_NUMBER.fullmatch(text):
        number = parse_number(text)
        if number is not None:
            return format_number(number), True
    return text, False


def _record(id_: str, question: str, answer: Any, meta: dict) -> dict:
    text, numeric = canonical_answer(answer)
    return {"id": id_, "question": question.strip(), "answer": text, "meta": {**meta, "numeric": numeric}}


# --- JSON shapes ---------------------------------------------------------------------------------


def _jsonl_rows(text: str, name: str) -> list[tuple[int, dict]]:
    """(1-based line number, object) for every non-blank line."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{name} line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{name} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _json_list(text: str, name: str) -> list[tuple[int, dict]]:
    """(0-based index, object) for every element of a top-level JSON list."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{name}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{name}: expected a JSON list of problems, got {type(data).__name__}")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DatasetError(f"{name} record {index}: expected a JSON object, got {type(row).__name__}")
    return list(enumerate(data))


def _require(row: dict, keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DatasetError(f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")


# --- GSM8K ---------------------------------------------------------------------------------------

_FINAL_LINE = re.compile(r"^####\s*(.*?)\s*$")


def _split_gsm8k_solution(solution: str, where: str) -> tuple[list[str], str]:
    """(solution step lines, final answer text) from a GSM8K answer field."""
    lines = [line for line in solution.strip().splitlines() if line.strip()]
    final = _FINAL_LINE.match(lines[-1]) if lines else None
    if final is None:
        raise DatasetError(f"{where}: missing '####' final answer")
    if not final.group(1):
        raise DatasetError(f"{where}: empty '####' final answer")
    return lines[:-1], final.group(1)


def _gsm8k_record(row: dict, id_: str, where: str) -> dict:
    _require(row, ("question", "answer"), where)
    steps, final = _split_gsm8k_solution(str(row["answer"]), where)
    meta: dict[str, Any] = {"dataset": "gsm8k"}
    if steps and all(" ** " in f"{step} " for step in steps):
        pairs = [f"{step} ".split(" ** ", 1) for step in steps]
        # A few socratic solutions repeat a sub-question with an empty step; drop those.
        meta["subquestions"] = [[q.strip(), s.strip()] for q, s in pairs if s.strip()]
        steps = [s for _, s in meta["subquestions"]]
    meta["solution"] = "\n".join(steps)
    return _record(id_, str(row["question"]), final, meta)


def _parse_gsm8k(text: str, name: str) -> list[dict]:
    stem = _stem(name)
    return [
        _gsm8k_record(row, f"gsm8k-{stem}-{number - 1:05d}", f"{name} line {number}")
        for number, row in _jsonl_rows(text, name)
    ]


# --- SVAMP and MultiArith ------------------------------------------------------------------------


def _svamp_record(row: dict, index: int, where: str) -> dict:
    _require(row, ("Body", "Question", "Answer"), where)
    question = f"{str(row['Body']).strip()} {str(row['Question']).strip()}"
    meta = {
        "dataset": "svamp",
        "source_id": str(row.get("ID", "")),
        "equation": str(row.get("Equation", "")).strip(),
        "type": str(row.get("Type", "")),
    }
    return _record(f"svamp-{row.get('ID', index)}", question, row["Answer"], meta)


def _parse_svamp(text: str, name: str) -> list[dict]:
    return [_svamp_record(row, index, f"{name} record {index}") for index, row in _json_list(text, name)]


def _multiarith_record(row: dict, index: int, where: str) -> dict:
    _require(row, ("sQuestion", "lSolutions"), where)
    solutions = row["lSolutions"]
    if not isinstance(solutions, list) or not solutions:
        raise DatasetError(f"{where}: 'lSolutions' must be a non-empty list, got {solutions!r}")
    meta = {
        "dataset": "multiarith",
        "source_id": str(row.get("iIndex", index)),
        "equations": [str(e) for e in row.get("lEquations", [])],
    }
    return _record(f"multiarith-{row.get('iIndex', index)}", str(row["sQuestion"]), solutions[0], meta)


def _parse_multiarith(text: str, name: str) -> list[dict]:
    return [_multiarith_record(row, index, f"{name} record {index}") for index, row in _json_list(text, name)]


# --- ASDiv ---------------------------------------------------------------------------------------

# "9 (apples)" → "9" and unit "apples"; "3 (r: 1)" keeps the remainder as unit text.
_ASDIV_ANSWER = re.compile(r"^(?P<value>.*?)\s*(?:\((?P<unit>[^()]*)\))?\s*$")


def _asdiv_record(problem: ET.Element, index: int, name: str) -> dict:
    where = f"{name} problem {problem.get('ID') or index}"

    def child(tag: str, required: bool = True) -> str:
        node = problem.find(tag)
        if node is None or node.text is None or not node.text.strip():
            if required:
                raise DatasetError(f"{where}: missing <{tag}>")
            return ""
        return " ".join(node.text.split())

    body, question, raw_answer = child("Body"), child("Question"), child("Answer")
    parsed = _ASDIV_ANSWER.match(raw_answer)
    value, unit = (parsed.group("value"), parsed.group("unit") or "") if parsed else (raw_answer, "")
    _, numeric = canonical_answer(value)
    meta = {
        "dataset": "asdiv",
        "source_id": problem.get("ID", str(index)),
        "grade": problem.get("Grade", ""),
        "solution_type": child("Solution-Type", required=False),
        "formula": child("Formula", required=False),
        "unit": unit,
        "raw_answer": raw_answer,
    }
    # Multi-part answers ("4 (apples);5 (pears)") are not one number: keep them whole.
    return _record(f"asdiv-{meta['source_id']}", f"{body} {question}", value if numeric else raw_answer, meta)


def _parse_asdiv(text: str, name: str) -> list[dict]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise DatasetError(f"{name}: not valid XML ({err})") from None
    problems = root.findall(".//Problem")
    if not problems and root.tag != "Problem":
        raise DatasetError(f"{name}: no <Problem> elements")
    problems = problems or [root]
    return [_asdiv_record(problem, index, name) for index, problem in enumerate(problems)]


# --- synthetic and normalised records ------------------------------------------------------------


def _normalised_record(row: dict, where: str) -> dict:
    _require(row, ("id", "question", "answer"), where)
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        raise DatasetError(f"{where}: 'meta' must be an object, got {type(meta).__name__}")
    return {"id": str(row["id"]), "question": str(row["question"]), "answer": str(row["answer"]), "meta": meta}


def _synthetic_record(row: dict, where: str) -> dict:
    record = _normalised_record(row, where)
    graph = record["meta"].get("graph")
    if not isinstance(graph, list) or not graph:
        raise DatasetError(f"{where}: synthetic record needs a non-empty 'meta.graph' list")
    for position, node in enumerate(graph):
        if not isinstance(node, dict) or not {"id", "op", "args", "value"} <= node.keys():
            raise DatasetError(f"{where}: meta.graph[{position}] must have id, op, args and value")
    return record


def _parse_synthetic(text: str, name: str) -> list[dict]:
    return [_synthetic_record(row, f"{name} line {number}") for number, row in _jsonl_rows(text, name)]


def _parse_records(text: str, name: str) -> list[dict]:
    return [_normalised_record(row, f"{name} line {number}") for number, row in _jsonl_rows(text, name)]


PARSERS: dict[str, Callable[[str, str], list[dict]]] = {
    "gsm8k": _parse_gsm8k,
    "svamp": _parse_svamp,
    "asdiv": _parse_asdiv,
    "multiarith": _parse_multiarith,
    "synthetic": _parse_synthetic,
    "records": _parse_records,
}


# --- format detection ----------------------------------------------------------------------------


def _format_of_row(row: dict) -> str | None:
    """The format a single JSON object looks like, or None."""
    if "sQuestion" in row and "lSolutions" in row:
        return "multiarith"
    if "Body" in row and "Question" in row and "Answer" in row:
        return "svamp"
    meta = row.get("meta")
    if {"id", "question", "answer"} <= row.keys():
        return "synthetic" if isinstance(meta, dict) and "graph" in meta else "records"
    if {"question", "answer"} <= row.keys() and "####" in str(row["answer"]):
        return "gsm8k"
    return None


def detect_format(text: str, name: str = "<data>") -> str:
    """The format of a dataset file from its name and content (see `FORMATS`)."""
    head = text.lstrip()
    lower = name.lower().removesuffix(".gz")
    if lower.endswith(".xml") or head.startswith("<"):
        if "<Problem" in text:
            return "asdiv"
        raise DatasetError(f"{name}: XML without <Problem> elements; only ASDiv XML is supported")
    if head.startswith("["):
        rows = _json_list(text, name)
        if not rows:
            raise DatasetError(f"{name}: empty JSON list; cannot detect the format")
        found = _format_of_row(rows[0][1])
        if found in ("svamp", "multiarith"):
            return found
        raise DatasetError(
            f"{name} record 0: cannot detect the format from fields {sorted(rows[0][1])}; "
            "expected SVAMP (Body, Question, Answer) or MultiArith (sQuestion, lSolutions)"
        )
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise DatasetError(f"{name}: empty file")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        raise DatasetError(f"{name}: not JSONL, JSON or XML; cannot detect the format") from None
    found = _format_of_row(row) if isinstance(row, dict) else None
    if found is None:
        fields = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise DatasetError(
            f"{name} line 1: cannot detect the format from {fields}; expected GSM8K (question, answer with '####') "
            "or records (id, question, answer); pass format= explicitly"
        )
    return found


# --- the Hugging Face hub ------------------------------------------------------------------------


def _parse_hf(source: str) -> tuple[str, str | None, str]:
    """`hf://openai/gsm8k/main:test` → ("openai/gsm8k", "main", "test")."""
    spec = source[len("hf://"):]
    path, sep, split = spec.rpartition(":")
    if not sep or not path or not split:
        raise DatasetError(f"{source}: expected hf://<owner>/<name>[/<config>]:<split>, e.g. hf://openai/gsm8k/main:test")
    parts = path.split("/")
    if len(parts) > 3:
        raise DatasetError(f"{source}: too many path parts; expected hf://<owner>/<name>[/<config>]:<split>")
    if len(parts) == 3:
        return "/".join(parts[:2]), parts[2], split
    return path, None, split


def _hf_rows(source: str) -> list[dict]:
    repo, config, split = _parse_hf(source)
    try:
        import datasets as hf_datasets
    except ImportError:
        raise DatasetError(f"{source}: loading from the Hugging Face hub needs the 'datasets' package (pip install datasets)") from None
    try:
        data = hf_datasets.load_dataset(repo, config, split=split)
    except Exception as err:  # the library raises many kinds; all mean "could not get it"
        raise DatasetError(
            f"{source}: could not load {repo}{'/' + config if config else ''} split {split!r} from the Hugging Face hub "
            f"(it needs network access, or a local copy in the datasets cache): {err}"
        ) from err
    return [dict(row) for row in data]


def _records_from_rows(rows: list[dict], format: str | None, name: str) -> list[dict]:
    """Records from in-memory rows (the hub), reusing the file parsers through JSONL text."""
    if format is None:
        format = _format_of_row(rows[0]) if rows else None
        if format is None:
            raise DatasetError(f"{name}: cannot detect the format from fields {sorted(rows[0]) if rows else []}; pass format=")
    if format in ("svamp", "multiarith"):
        return PARSERS[format](json.dumps(rows, default=str), name)
    if format == "asdiv":
        raise DatasetError(f"{name}: ASDiv from the hub is not supported; load its XML file")
    return PARSERS[format]("\n".join(json.dumps(row, default=str) for row in rows), name)


# --- public API ----------------------------------------------------------------------------------


def load_records(source: str, format: str | None = None, limit: int | None = None) -> list[dict]:
    """Normalised records from a path, file://, s3:// or hf:// source (see the module docstring)."""
    if format is not None and format not in PARSERS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if source.startswith("hf://"):
        repo, config, split = _parse_hf(source)
        # Named like the files the hub copies come from (gsm8k/test, gsm8k/test_socratic), so ids match.
        name = f"{repo.rsplit('/', 1)[-1]}/{split}" + (f"_{config}" if config not in (None, "main") else "")
        records = _records_from_rows(_hf_rows(source), format, name)
    else:
        name = _display_name(source)
        text = _decode(_read_source(source), name)
        records = PARSERS[format or detect_format(text, name)](text, name)
    return records[:limit] if limit is not None else records


def _split_key(seed: int, record_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{record_id}".encode()).digest()


def split_validation(records: list[dict], size: int | float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, validation): a validation split carved from `records`.

    `size` is a count (int) or a fraction (float in [0, 1]). Membership depends
    only on (seed, id) through a hash, so it is the same on every machine and run,
    and a record stays on its side when others are added or removed. Both parts
    keep the input order.
    """
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise TypeError(f"size must be an int count or a float fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 <= size <= 1.0:
            raise ValueError(f"a fractional validation size must be in [0, 1], got {size}")
        count = round(size * len(records))
    else:
        if not 0 <= size <= len(records):
            raise ValueError(f"validation size must be in [0, {len(records)}], got {size}")
        count = size
    order = sorted(range(len(records)), key=lambda i: (_split_key(seed, str(records[i]["id"])), i))
    chosen = set(order[:count])
    train = [r for i, r in enumerate(records) if i not in chosen]
    validation = [r for i, r in enumerate(records) if i in chosen]
    return train, validation


def dump_jsonl(records: Iterable[dict], path: str | Path) -> int:
    """Write records as JSONL (gzipped when the name ends in .gz); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    data = ("\n".join(lines) + "\n" if lines else "").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return len(lines)
