"""Behaviour of `siked_runtime.storage`, the same suite over a local directory and S3.

    pytest tests/test_storage.py                    # both backends (S3 via moto's HTTP server)
    pytest tests/test_storage.py -m "not integration"   # local directory only
"""

from __future__ import annotations

import gzip
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from siked_runtime.storage import (
    LocalStore,
    S3Store,
    StorageError,
    Store,
    clear_stage,
    is_done,
    list_manifests,
    open_store,
    publish,
    read_bytes,
    read_manifest,
    read_text,
)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return open_store((tmp_path / "run").as_uri())
    s3_bucket = request.getfixturevalue("s3_bucket")
    return open_store(s3_bucket.uri, endpoint_url=s3_bucket.endpoint_url)


@pytest.fixture
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and no endpoint from the developer's shell, for tests that need no server."""
    for name in ("SIKED_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _rows(n: int) -> list[dict]:
    return [{"id": i, "question": f"What is {i} + {i}? ünïcode", "answer": 2 * i} for i in range(n)]


# ------------------------------------------------------------ basic objects


def test_bytes_text_json_roundtrip(store: Store) -> None:
    store.put_bytes("a/blob.bin", b"\x00\x01\xff")
    store.put_text("a/note.txt", "héllo\n")
    store.put_json("a/obj.json", {"x": [1, 2.5, None], "when": datetime(2024, 1, 2, tzinfo=UTC)})

    assert store.get_bytes("a/blob.bin") == b"\x00\x01\xff"
    assert store.get_text("a/note.txt") == "héllo\n"
    assert store.get_json("a/obj.json") == {"x": [1, 2.5, None], "when": "2024-01-02T00:00:00+00:00"}

    store.put_text("a/note.txt", "replaced")
    assert store.get_text("a/note.txt") == "replaced"


def test_exists(store: Store) -> None:
    assert not store.exists("x/y.txt")
    store.put_text("x/y.txt", "1")
    assert store.exists("x/y.txt")
    assert not store.exists("x")  # a folder is not a key


def test_missing_key_raises_file_not_found_naming_uri(store: Store, tmp_path: Path) -> None:
    url = store.url("nope/missing.json")
    for read in (store.get_bytes, store.get_json, store.read_jsonl):
        with pytest.raises(FileNotFoundError) as info:
            read("nope/missing.json")
        assert url in str(info.value)
    with pytest.raises(FileNotFoundError):
        store.download_file("nope/missing.json", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    with pytest.raises(FileNotFoundError, match="nope"):
        store.download_dir("nope", tmp_path / "out")


def test_keys_cannot_escape_the_store(store: Store) -> None:
    for bad in ("../x", "a/../../x", "/etc/passwd", ""):
        with pytest.raises(ValueError):
            store.put_text(bad, "no")


# ------------------------------------------------------- listing, sub-stores


def test_list_is_recursive_sorted_and_relative(store: Store) -> None:
    for key in ("b/2.txt", "a/1.txt", "a/deep/3.txt", "ab/4.txt", "top.txt"):
        store.put_text(key, key)

    assert store.list() == ["a/1.txt", "a/deep/3.txt", "ab/4.txt", "b/2.txt", "top.txt"]
    # A prefix is a folder: "a" does not match "ab/...".
    assert store.list("a") == ["a/1.txt", "a/deep/3.txt"]
    assert store.list("a/") == ["a/1.txt", "a/deep/3.txt"]
    assert store.list("missing") == []


def test_child_store_and_urls(store: Store) -> None:
    assert store.url("a/b.json") == store.uri + "/a/b.json"
    child = store.child("iter-000/train")
    assert child.uri == store.url("iter-000/train")

    child.put_text("model/config.json", "{}")
    assert store.get_text("iter-000/train/model/config.json") == "{}"
    assert child.list() == ["model/config.json"]
    assert child.child("model").list() == ["config.json"]
    assert open_store(child.uri).list() == ["model/config.json"]  # S3: endpoint from SIKED_S3_ENDPOINT


def test_read_by_full_uri(store: Store) -> None:
    store.put_text("data/q.jsonl", '{"q": 1}\n')
    store.write_jsonl("data/q.jsonl.gz", [{"q": 1}])
    # For S3 the endpoint comes from SIKED_S3_ENDPOINT, set by the s3_bucket fixture.
    assert read_bytes(store.url("data/q.jsonl")) == b'{"q": 1}\n'
    assert read_text(store.url("data/q.jsonl")) == '{"q": 1}\n'
    assert read_text(store.url("data/q.jsonl.gz")) == '{"q": 1}\n'
    with pytest.raises(FileNotFoundError, match="data/nope"):
        read_bytes(store.url("data/nope"))


def test_delete_prefix(store: Store) -> None:
    for key in ("s/a.txt", "s/b/c.txt", "s2/keep.txt", "keep.txt"):
        store.put_text(key, key)
    store.delete_prefix("s")
    assert store.list() == ["keep.txt", "s2/keep.txt"]
    store.delete_prefix("not-there")  # no error
    store.delete("keep.txt")
    store.delete("keep.txt")  # deleting twice is fine
    assert store.list() == ["s2/keep.txt"]


# ----------------------------------------------------------------- JSONL


@pytest.mark.parametrize("key", ["rows.jsonl", "rows.jsonl.gz"])
def test_jsonl_roundtrip(store: Store, key: str) -> None:
    rows = _rows(50)
    assert store.write_jsonl(key, iter(rows)) == 50
    assert store.read_jsonl(key) == rows
    assert list(store.iter_jsonl(key)) == rows

    raw = store.get_bytes(key)
    if key.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        assert gzip.decompress(raw).decode().count("\n") == 50
    else:
        assert raw.decode().splitlines()[0].startswith('{"id": 0')


def test_jsonl_empty_and_blank_lines(store: Store) -> None:
    assert store.write_jsonl("empty.jsonl.gz", []) == 0
    assert store.read_jsonl("empty.jsonl.gz") == []
    store.put_text("blank.jsonl", '{"a": 1}\n\n{"a": 2}\n\n')
    assert store.read_jsonl("blank.jsonl") == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("key", ["out.jsonl", "out.jsonl.gz"])
def test_failed_write_leaves_old_content(store: Store, key: str) -> None:
    store.write_jsonl(key, [{"old": True}])

    def rows():
        yield {"new": 1}
        yield {"new": 2}
        raise RuntimeError("writer died halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        store.write_jsonl(key, rows())
    assert store.read_jsonl(key) == [{"old": True}]
    assert store.list() == [key]  # no partial files visible


def test_new_key_invisible_until_write_completes(store: Store) -> None:
    seen_during_write = []

    def rows():
        for i in range(3):
            seen_during_write.append(store.exists("fresh.jsonl"))
            yield {"i": i}
        raise KeyboardInterrupt  # like a killed process: not even an Exception

    with pytest.raises(KeyboardInterrupt):
        store.write_jsonl("fresh.jsonl", rows())
    assert seen_during_write == [False, False, False]
    assert not store.exists("fresh.jsonl")
    assert store.list() == []


def test_local_atomic_write_cleans_temp_files(tmp_path: Path) -> None:
    store = open_store(tmp_path)

    def rows():
        yield {"a": 1}
        raise ValueError("boom")

    with pytest.raises(ValueError):
        store.write_jsonl("stage/data.jsonl", rows())
    assert os.listdir(tmp_path / "stage") == []

    store.put_text("stage/data.jsonl", "x")
    assert os.listdir(tmp_path / "stage") == ["data.jsonl"]
    # Same permissions as any other new file (mkstemp alone would give 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "stage" / "data.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------- directories


def test_upload_and_download_dir(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(os.urandom(300_000))
    (src / "config.json").write_text('{"layers": 2}')
    (src / "sub" / "tokenizer.json").write_text("{}")

    keys = store.upload_dir("iter-000/train/model", src)
    assert keys == [
        "iter-000/train/model/config.json",
        "iter-000/train/model/model.safetensors",
        "iter-000/train/model/sub/tokenizer.json",
    ]
    assert store.list("iter-000/train") == keys

    dst = tmp_path / "downloaded"
    paths = store.download_dir("iter-000/train/model", dst)
    assert sorted(p.relative_to(dst).as_posix() for p in paths) == [
        "config.json",
        "model.safetensors",
        "sub/tokenizer.json",
    ]
    for name in ("model.safetensors", "config.json", "sub/tokenizer.json"):
        assert (dst / name).read_bytes() == (src / name).read_bytes()


def test_upload_and_download_single_file(store: Store, tmp_path: Path) -> None:
    (tmp_path / "in.bin").write_bytes(b"weights")
    store.upload_file("w/in.bin", tmp_path / "in.bin")
    store.download_file("w/in.bin", tmp_path / "deep" / "out.bin")
    assert (tmp_path / "deep" / "out.bin").read_bytes() == b"weights"
    with pytest.raises(FileNotFoundError):
        store.upload_file("w/x.bin", tmp_path / "does-not-exist.bin")


# ------------------------------------------------------- stage publication


def test_publish_writes_manifest_last(store: Store) -> None:
    store.write_jsonl("teacher/solutions.jsonl.gz", _rows(3))
    assert not is_done(store, "teacher")
    assert read_manifest(store, "teacher") is None
    assert list_manifests(store) == {}

    written = publish(store, "teacher", {"rows": 3})
    assert is_done(store, "teacher")
    assert read_manifest(store, "teacher") == written
    assert written["rows"] == 3
    published_at = datetime.fromisoformat(written["published_at"])
    assert published_at.tzinfo is not None
    assert abs((datetime.now(UTC) - published_at).total_seconds()) < 60


def test_list_manifests_finds_finished_stages(store: Store) -> None:
    store.put_text("spec.yaml", "kind: DistillationRun\n")
    publish(store, "teacher", {"rows": 10})
    store.put_text("iter-000/train/model/manifest.json", '{"shipped": "with the model"}')
    store.put_text("iter-000/train/model/config.json", "{}")
    publish(store, "iter-000/train", {"loss": 0.5})
    store.put_text("iter-000/eval/partial.json", "{}")  # started, not finished

    manifests = list_manifests(store)
    assert list(manifests) == ["iter-000/train", "teacher"]
    assert manifests["iter-000/train"]["loss"] == 0.5
    assert manifests["teacher"]["rows"] == 10


def test_clear_stage(store: Store) -> None:
    store.put_text("iter-001/sample/part-0.jsonl", "{}\n")
    store.put_text("iter-001/sample-other/keep.txt", "keep")
    publish(store, "teacher", {"rows": 1})
    store.put_text("teacher/solutions.jsonl", "{}\n")

    # Partial stage: its leftovers go, neighbours stay.
    assert clear_stage(store, "iter-001/sample") is True
    assert store.list("iter-001") == ["iter-001/sample-other/keep.txt"]
    assert clear_stage(store, "iter-001/sample") is True  # nothing left: still fine

    # Finished stage: untouched unless forced.
    assert clear_stage(store, "teacher") is False
    assert is_done(store, "teacher")
    assert store.exists("teacher/solutions.jsonl")
    assert clear_stage(store, "teacher", force=True) is True
    assert store.list("teacher") == []

    with pytest.raises(ValueError):
        clear_stage(store, "")  # would wipe the whole run


def test_clear_stage_keeps_the_journal_and_finished_parts(store: Store) -> None:
    store.put_text("teacher/all.jsonl", "{}\n")                      # partial output: goes
    store.put_text("teacher/journal/000.jsonl", "{}\n")              # paid-for replies: stay
    publish(store, "teacher/parts/0", {"rows": 1})                    # a finished part: stays
    store.put_text("teacher/parts/0/solutions.jsonl", "{}\n")
    store.put_text("teacher/parts/1/solutions.jsonl", "{}\n")        # an unfinished part: goes
    store.put_text("teacher/parts/1/journal/000.jsonl", "{}\n")      # its journal: stays
    store.put_text("teacher/journal.txt", "not the journal folder")   # a file named like it: goes

    assert clear_stage(store, "teacher") is True
    assert store.list("teacher") == [
        "teacher/journal/000.jsonl",
        "teacher/parts/0/manifest.json",
        "teacher/parts/0/solutions.jsonl",
        "teacher/parts/1/journal/000.jsonl",
    ]
    # The unfinished part, cleared on its own, keeps its own journal.
    store.put_text("teacher/parts/1/solutions.jsonl", "{}\n")
    assert clear_stage(store, "teacher/parts/1") is True
    assert store.list("teacher/parts/1") == ["teacher/parts/1/journal/000.jsonl"]
    # Forced: everything goes.
    assert clear_stage(store, "teacher", force=True) is True
    assert store.list("teacher") == []


# -------------------------------------------------------- opening and errors


def test_open_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("runs/demo")
    assert isinstance(relative, LocalStore)
    assert relative.uri == (tmp_path / "runs" / "demo").as_uri()
    assert open_store(str(tmp_path / "runs" / "demo")).uri == relative.uri
    assert open_store(relative.uri).uri == relative.uri
    assert open_store("file://localhost" + str(tmp_path)).uri == tmp_path.as_uri()

    spaced = open_store(tmp_path / "with space")
    spaced.put_text("k.txt", "v")
    assert open_store(spaced.uri).get_text("k.txt") == "v"
    assert read_text(spaced.url("k.txt")) == "v"

    with pytest.raises(ValueError, match="three slashes"):
        open_store("file://relative/path")
    with pytest.raises(ValueError, match="empty"):
        open_store("")


def test_open_s3_uri_forms(fake_aws_env: None) -> None:
    assert open_store("s3://bucket/a/b/").uri == "s3://bucket/a/b"
    root = open_store("s3://bucket")
    assert isinstance(root, S3Store)
    assert root.uri == "s3://bucket"
    assert root.url("x/y") == "s3://bucket/x/y"
    assert root.child("x").url("y") == "s3://bucket/x/y"
    with pytest.raises(ValueError, match="no bucket"):
        open_store("s3:///prefix")


def test_s3_endpoint_resolution(fake_aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def endpoint(endpoint_url: str | None = None) -> str | None:
        store = open_store("s3://b", endpoint_url=endpoint_url)
        assert isinstance(store, S3Store)
        return store.endpoint_url

    assert endpoint() is None  # AWS itself
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert endpoint() == "http://generic:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:2")
    assert endpoint() == "http://s3-only:2"
    monkeypatch.setenv("SIKED_S3_ENDPOINT", "http://minio:9000")
    assert endpoint() == "http://minio:9000"
    assert endpoint("http://ceph:7480") == "http://ceph:7480"


@pytest.mark.parametrize("uri", ["gs://bucket/run", "http://example.com/run", "hdfs:///data"])
def test_unknown_scheme(uri: str) -> None:
    with pytest.raises(ValueError, match="unsupported storage URI") as info:
        open_store(uri)
    assert uri in str(info.value)
    with pytest.raises(ValueError, match="unsupported storage URI"):
        read_bytes(uri + "/x.json")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_s3_raises_storage_error(fake_aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # connection refused is final; skip the backoff
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = open_store("s3://unreachable-bucket/run", endpoint_url=endpoint)

    operations = [
        lambda: store.get_bytes("teacher/manifest.json"),
        lambda: store.put_text("teacher/manifest.json", "{}"),
        lambda: store.exists("teacher/manifest.json"),
        lambda: store.list("teacher"),
        lambda: is_done(store, "teacher"),
    ]
    for operation in operations:
        with pytest.raises(StorageError) as info:
            operation()
        message = str(info.value)
        assert "s3://unreachable-bucket/run/teacher" in message
        assert endpoint in message
        assert isinstance(info.value, OSError)


@pytest.mark.integration
def test_missing_bucket_is_a_storage_error(s3_bucket) -> None:
    store = open_store("s3://no-such-bucket-here/run", endpoint_url=s3_bucket.endpoint_url)
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/run/k"):
        store.put_text("k", "v")
