"""The teacher's journal: every paid reply, kept in the stage's storage as it arrives.

    journal = Journal(store, "teacher/journal")
    done = journal.load()                 # entries of earlier attempts, torn chunks skipped
    journal.add({"id": "q1", "strategy": "cot", "sample": 0, "request": "…", "text": "…", …})
    journal.flush()                       # also done every `flush_every` entries and at the end

S3 has no append, so the journal is a folder of small chunk files, one JSON object a
line, written whole: `<run token>-<seq>.jsonl`, where the run token (time, then random)
keeps the chunks of two attempts (or two shards) apart and in time order. A chunk that
cannot be read, or a line in it that is not a well-formed entry, is skipped and counted:
a journal only ever saves requests, so losing a bad piece of it costs a request, never
the stage. `storage.clear_stage` keeps `journal/` folders when a stage is rerun.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field

from siked_runtime.storage import Store

# What a well-formed entry holds, and the type of each field.
FIELDS = {"id": str, "strategy": str, "sample": int, "request": str, "text": str}


@dataclass
class Loaded:
    """A journal as read back: its entries in the order they were written, and what was skipped."""

    entries: list[dict] = field(default_factory=list)
    chunks: int = 0
    skipped_chunks: int = 0
    skipped_lines: int = 0


def well_formed(entry: object) -> bool:
    """Whether a decoded line is an entry this module wrote (a torn or foreign line is not)."""
    return isinstance(entry, dict) and all(
        isinstance(entry.get(name), kind) and not isinstance(entry.get(name), bool) for name, kind in FIELDS.items())


def parse_chunk(data: bytes, loaded: Loaded) -> None:
    """Add a chunk's well-formed entries to `loaded`; a torn last line (a killed writer) is one skipped line."""
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:  # includes UnicodeDecodeError
            loaded.skipped_lines += 1
            continue
        if well_formed(entry):
            loaded.entries.append(entry)
        else:
            loaded.skipped_lines += 1


class Journal:
    """Append-only chunks of JSON entries under `prefix` in `store`; safe to call from several threads."""

    def __init__(self, store: Store, prefix: str, flush_every: int = 64):
        self.store, self.prefix, self.flush_every = store, prefix.strip("/"), flush_every
        self.token = f"{time.time_ns():x}-{os.urandom(4).hex()}"
        self._pending: list[dict] = []
        self._seq = 0
        # Reentrant: a SIGTERM handler may flush while this thread is inside `add`.
        self._lock = threading.RLock()

    def load(self) -> Loaded:
        """Every well-formed entry written so far, chunk by chunk in name (time) order."""
        loaded = Loaded()
        for key in sorted(k for k in self.store.list(self.prefix) if k.endswith(".jsonl")):
            try:
                data = self.store.get_bytes(key)
            except FileNotFoundError:  # deleted between list and read
                loaded.skipped_chunks += 1
                continue
            loaded.chunks += 1
            parse_chunk(data, loaded)
        return loaded

    def add(self, entry: dict) -> bool:
        """Queue one entry; returns whether enough are queued that the caller should flush."""
        with self._lock:
            self._pending.append(entry)
            return len(self._pending) >= self.flush_every

    def flush(self) -> int:
        """Write the queued entries as one new chunk; returns how many were written."""
        with self._lock:
            entries, self._pending = self._pending, []
            if not entries:
                return 0
            self._seq += 1
            key = f"{self.prefix}/{self.token}-{self._seq:06d}.jsonl"
            data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
            # Under the lock, so that chunks appear in sequence order; one small object per flush.
            try:
                self.store.put_bytes(key, data.encode("utf-8", "backslashreplace"))
            except BaseException:
                self._pending[:0] = entries  # kept for the next flush
                raise
        return len(entries)
