"""A stage's model from an s3:// run reaches local disk once per node, whole or not at all."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from siked_runtime.stages.common import local_model
from siked_runtime.storage import open_store

pytestmark = pytest.mark.integration

FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\x00" * 300_000,
         "tokenizer.json": b"{}", "extra/nested.bin": b"\x01" * 1000}


@pytest.fixture
def store(s3_bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SIKED_CACHE", str(tmp_path / "cache"))
    store = open_store(s3_bucket.uri, endpoint_url=s3_bucket.endpoint_url)
    for name, data in FILES.items():
        store.put_bytes(f"iter-000/train/model/{name}", data)
    return store


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_ranks_of_a_node_download_the_model_once_and_each_sees_it_whole(store, monkeypatch) -> None:
    downloads = []
    real = store.download_dir

    def counted(prefix, local_dir):
        downloads.append(prefix)
        return real(prefix, local_dir)

    monkeypatch.setattr(store, "download_dir", counted)
    start, seen, errors = threading.Barrier(6), [], []

    def rank() -> None:
        start.wait()
        try:
            path = local_model(store, "iter-000/train")
            seen.append(_tree(path))  # read at once: a rank must never see a partial directory
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rank) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(downloads) == 1
    assert seen == [FILES] * 6


def test_an_interrupted_download_is_not_taken_for_a_model(store, monkeypatch) -> None:
    real = store.download_file
    calls = []

    def fails_second(key, path):
        calls.append(key)
        if len(calls) == 2:
            raise ConnectionResetError("connection reset by peer")
        return real(key, path)

    monkeypatch.setattr(store, "download_file", fails_second)
    with pytest.raises(ConnectionResetError):
        local_model(store, "iter-000/train")
    cache = Path(os.environ["SIKED_CACHE"])
    assert list(cache.rglob("config.json")) == [], "a half-downloaded model must not look finished"
    assert not [p for p in cache.rglob("*") if p.name.startswith(".model.")], "no temporary directory is left"
    path = local_model(store, "iter-000/train")  # the next attempt downloads it again, whole
    assert _tree(path) == FILES
