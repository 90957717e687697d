"""What every stage shares: the run's store, models on local disk, verification, progress."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from siked_runtime.console import Progress, log  # noqa: F401 - stages import log from here
from siked_runtime.storage import LocalStore, Store

MODEL_DIR = "model"


def cache_dir() -> Path:
    return Path(os.environ.get("SIKED_CACHE", Path.home() / ".cache" / "siked"))


def local_model(store: Store, prefix: str) -> Path:
    """A stage's model directory on local disk: in place for file:// runs, downloaded once for s3://.

    The download goes through `models.build_once`: the processes of a node (torchrun's ranks)
    download it once between them, and an interrupted download is never taken for a model."""
    from siked_runtime.models import build_once

    key = f"{prefix}/{MODEL_DIR}"
    if isinstance(store, LocalStore):
        return store.root / key
    target = cache_dir() / "runs" / store.uri.replace("://", "/").strip("/") / key
    if not (target / "config.json").exists():
        build_once(target, lambda tmp: store.download_dir(key, tmp))
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


class Rate(Progress):
    """Counts, rates and time left for a stage's work items (`console.Progress`)."""

    def __init__(self, what: str, total: int, unit: str = "item"):
        super().__init__(what, total, unit=unit)

    def update(self, n: int, extra: str = "") -> None:
        super().update(n, extra)
