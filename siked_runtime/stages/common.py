"""What every stage shares: the run's store, models on local disk, verification, progress."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from siked_runtime.storage import LocalStore, Store

MODEL_DIR = "model"


def cache_dir() -> Path:
    return Path(os.environ.get("SIKED_CACHE", Path.home() / ".cache" / "siked"))


def local_model(store: Store, prefix: str) -> Path:
    """A stage's model directory on local disk: in place for file:// runs, downloaded once for s3://."""
    key = f"{prefix}/{MODEL_DIR}"
    if isinstance(store, LocalStore):
        return store.root / key
    target = cache_dir() / "runs" / store.uri.replace("://", "/").strip("/") / key
    if not (target / "config.json").exists():
        store.download_dir(key, target)
    return target


@contextmanager
def model_output(store: Store, prefix: str) -> Iterator[Path]:
    """Where a stage writes its model: in place for file:// runs; for s3:// a scratch directory
    uploaded to `<prefix>/model/` when the block ends without an error."""
    if isinstance(store, LocalStore):
        yield store.root / prefix / MODEL_DIR
        return
    with tempfile.TemporaryDirectory(prefix="siked-model-") as tmp:
        out = Path(tmp) / MODEL_DIR
        yield out
        store.upload_dir(f"{prefix}/{MODEL_DIR}", out)


def log(message: str) -> None:
    print(f"[siked {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Rate:
    """Counts and rates for periodic progress lines."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.done, self.start = what, total, 0, time.perf_counter()

    def update(self, n: int, extra: str = "") -> None:
        self.done += n
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        log(f"{self.what}: {self.done}/{self.total} ({rate:.1f}/s){' ' + extra if extra else ''}")
