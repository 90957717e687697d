"""Run storage: one API over a local directory and an S3 bucket.

A run lives under one URI (see ARCHITECTURE.md §4). Stages write their artifacts
through a `Store`, then publish a `manifest.json` last; a stage is done exactly
when its manifest exists.

    store = open_store("s3://runs/demo")            # or "file:///data/runs/demo", or "runs/demo"
    store.write_jsonl("teacher/solutions.jsonl.gz", rows)
    publish(store, "teacher", {"rows": 1234})
    is_done(store, "teacher")                       # True
    list_manifests(store)                           # {"teacher": {...}}

    text = read_text("s3://datasets/gsm8k/test.jsonl")  # a single object by URI

S3 endpoints for MinIO/Ceph come from the `endpoint_url` argument or, in this
order, `SIKED_S3_ENDPOINT`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`;
credentials and region come from boto3's default chain (environment, config
files, instance/pod identity). Retries follow botocore's "standard" mode; the
number of attempts can be tuned with `AWS_MAX_ATTEMPTS`.

Errors: a missing key raises `FileNotFoundError`, storage that cannot be
reached (or refuses the request) raises `StorageError`; both name the URI.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import json
import os
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse
from urllib.request import url2pathname

from siked_runtime import credentials

MANIFEST = "manifest.json"

# Suffix of in-flight local writes. A killed writer leaves such a file behind,
# never a truncated file under the final name; listings skip them and
# `clear_stage` removes them with the rest of a partial stage.
_PARTIAL_SUFFIX = ".siked-partial"

# Files created by mkstemp are 0600; published artifacts should get the same
# permissions as any other file this process creates. Read once at import
# because reading the umask means briefly changing it.
_UMASK = os.umask(0)
os.umask(_UMASK)

# Objects up to this size stay in memory while being read or written to S3.
_SPOOL_BYTES = 32 * 1024 * 1024


class StorageError(OSError):
    """Storage could not be reached or refused a request; `uri` says which object."""

    def __init__(self, message: str, uri: str = "") -> None:
        super().__init__(message)
        self.uri = uri


# ---------------------------------------------------------------- keys and JSON


def _clean_key(key: str, *, allow_empty: bool = False) -> str:
    """Normalise a store-relative key ("a//b/" -> "a/b") and reject escapes."""
    key = os.fspath(key)
    if key.startswith("/"):
        raise ValueError(f"storage keys are relative to the store, got absolute key {key!r}")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"storage keys may not contain '..', got {key!r}")
    if not parts and not allow_empty:
        raise ValueError("storage key is empty")
    return "/".join(parts)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _json_default(value: Any) -> Any:
    # Manifests carry metrics computed with numpy and timestamps; store them as
    # plain JSON values rather than failing at the very end of a stage.
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def _dumps(obj: Any, *, indent: int | None = None) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=indent, default=_json_default)


def _maybe_gzip(raw: BinaryIO, key: str, mode: str) -> AbstractContextManager[BinaryIO]:
    """`raw` itself, or a gzip stream over it when `key` ends with .gz (closing it leaves `raw` open)."""
    if not key.endswith(".gz"):
        return nullcontext(raw)
    # mtime=0 keeps identical rows byte-identical across reruns.
    return gzip.GzipFile(fileobj=raw, mode=mode, compresslevel=6, mtime=0)  # type: ignore[return-value]


def _missing(uri: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), uri)


# ------------------------------------------------------------------- the API


class Store(ABC):
    """Objects under one prefix, addressed by relative keys like `iter-000/train/manifest.json`."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """The store's own URI, without a trailing slash."""

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """The store rooted at `prefix` inside this one."""

    @abstractmethod
    def url(self, key: str) -> str:
        """Full URI of `key`."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key; deleting a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys under the folder `prefix`, recursively, sorted, relative to this store."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under the folder `prefix` ("" means the whole store)."""

    @abstractmethod
    def upload_file(self, key: str, local_path: str | os.PathLike[str]) -> None: ...

    @abstractmethod
    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None: ...

    @abstractmethod
    def _writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Context manager: a binary file whose content appears under `key` only if the block succeeds."""

    @abstractmethod
    def _reader(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Context manager: a binary file with the content of `key`."""

    # Everything below is built on the primitives above.

    def put_text(self, key: str, text: str) -> None:
        self.put_bytes(key, text.encode("utf-8"))

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")

    def put_json(self, key: str, obj: Any) -> None:
        self.put_text(key, _dumps(obj, indent=2) + "\n")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def write_jsonl(self, key: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Write one JSON object per line (gzipped if `key` ends with .gz); returns the row count.

        Nothing appears under `key` unless every row was written.
        """
        count = 0
        with self._writer(key) as raw, _maybe_gzip(raw, key, "wb") as out:
            for row in rows:
                # A lone surrogate (model text can hold one) becomes the JSON escape it came from.
                out.write((_dumps(row) + "\n").encode("utf-8", "backslashreplace"))
                count += 1
        return count

    def iter_jsonl(self, key: str) -> Iterator[dict[str, Any]]:
        """Yield the rows of a JSONL object (gunzipped if `key` ends with .gz); blank lines are skipped."""
        with self._reader(key) as raw, _maybe_gzip(raw, key, "rb") as src:
            for line in src:
                if line.strip():
                    yield json.loads(line)

    def read_jsonl(self, key: str) -> builtins.list[dict[str, Any]]:
        return list(self.iter_jsonl(key))

    def upload_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> builtins.list[str]:
        """Upload every file under `local_dir` (symlinked files too) to `prefix/...`; returns the keys."""
        root = Path(local_dir)
        if not root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(root))
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = _join(_clean_key(prefix, allow_empty=True), path.relative_to(root).as_posix())
            self.upload_file(key, path)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> builtins.list[Path]:
        """Download every key under `prefix` into `local_dir`, keeping relative paths; returns the files."""
        prefix = _clean_key(prefix, allow_empty=True)
        keys = self.list(prefix)
        if not keys:
            raise _missing(self.url(prefix) if prefix else self.uri)
        paths = []
        for key in keys:
            relative = _clean_key(key[len(prefix) :].lstrip("/"))
            path = Path(local_dir, *relative.split("/"))
            self.download_file(key, path)
            paths.append(path)
        return paths

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


# ------------------------------------------------------------ local directory


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write `path` via a temp file in the same directory, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem supports it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalStore(Store):
    """A directory on a local (or mounted) filesystem."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(root)))

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix, allow_empty=True))

    def url(self, key: str) -> str:
        return self._path(key, allow_empty=True).as_uri()

    def _path(self, key: str, *, allow_empty: bool = False) -> Path:
        key = _clean_key(key, allow_empty=allow_empty)
        return self.root.joinpath(*key.split("/")) if key else self.root

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._writer(key) as f:
            f.write(data)

    def get_bytes(self, key: str) -> bytes:
        with self._reader(key) as f:
            return f.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        top = self._path(prefix, allow_empty=True)
        if not top.is_dir():
            return []
        keys = []
        for dirpath, _, filenames in os.walk(top):
            for name in filenames:
                if not name.endswith(_PARTIAL_SUFFIX):
                    keys.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        top = self._path(prefix, allow_empty=True)
        if top.is_dir():
            shutil.rmtree(top)

    def upload_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        with open(local_path, "rb") as src, self._writer(key) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        with self._reader(key) as src, _atomic_file(Path(local_path)) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)

    @contextmanager
    def _writer(self, key: str) -> Iterator[BinaryIO]:
        with _atomic_file(self._path(key)) as f:
            yield f

    @contextmanager
    def _reader(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            f = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _missing(self.url(key)) from None
        with f:
            yield f


# ----------------------------------------------------------------------- S3


def _resolve_endpoint(endpoint_url: str | None) -> str | None:
    for value in (
        endpoint_url,
        os.environ.get("SIKED_S3_ENDPOINT"),
        os.environ.get("AWS_ENDPOINT_URL_S3"),
        os.environ.get("AWS_ENDPOINT_URL"),
    ):
        if value:
            return value
    return None


_clients: dict[tuple[int, str | None], Any] = {}
_clients_lock = threading.Lock()


def _s3_client(endpoint_url: str | None) -> Any:
    """A cached boto3 S3 client per endpoint (clients are thread-safe, creating them is slow)."""
    import boto3
    from botocore.config import Config

    # Keyed by pid too: a client inherited through fork shares sockets with the parent.
    cache_key = (os.getpid(), endpoint_url)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            config = Config(
                # Leaving max_attempts out lets AWS_MAX_ATTEMPTS / the config file set it.
                retries={"mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                # MinIO and Ceph are usually reached by IP or a cluster service
                # name, where virtual-host bucket addressing cannot resolve.
                s3={"addressing_style": "path"} if endpoint_url else None,
            )
            # A private session: boto3's default session is not thread-safe.
            client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config,
                                                     **credentials.s3_keys())
            _clients[cache_key] = client
    return client


@contextmanager
def _s3_errors(uri: str, endpoint_url: str | None) -> Iterator[None]:
    """Turn botocore exceptions into FileNotFoundError / StorageError that name `uri`."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    where = f" (endpoint {endpoint_url})" if endpoint_url else ""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise _missing(uri) from None
        message = error.get("Message") or str(exc)
        raise StorageError(f"S3 request for {uri}{where} failed: {code}: {message}", uri) from exc
    except (BotoCoreError, Boto3Error) as exc:
        raise StorageError(f"cannot reach storage for {uri}{where}: {exc}", uri) from exc


class S3Store(Store):
    """Keys under `s3://bucket/prefix`."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = _clean_key(prefix, allow_empty=True)
        self.endpoint_url = endpoint_url
        self._client = _s3_client(endpoint_url)

    @property
    def uri(self) -> str:
        return f"s3://{_join(self.bucket, self.prefix)}"

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, self._key(prefix, allow_empty=True), endpoint_url=self.endpoint_url)

    def url(self, key: str) -> str:
        return f"s3://{_join(self.bucket, self._key(key, allow_empty=True))}"

    def _key(self, key: str, *, allow_empty: bool = False) -> str:
        return _join(self.prefix, _clean_key(key, allow_empty=allow_empty))

    def _errors(self, key: str) -> AbstractContextManager[None]:
        return _s3_errors(self.url(key) if key else self.uri, self.endpoint_url)

    def put_bytes(self, key: str, data: bytes) -> None:
        # A single PUT is atomic on S3: readers see the old object or the new one.
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        """Full object keys under the folder `prefix` of this store."""
        folder = self._key(prefix, allow_empty=True)
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{folder}/" if folder else ""):
                for obj in page.get("Contents", []):
                    yield obj["Key"]

    def list(self, prefix: str = "") -> list[str]:
        start = len(self.prefix) + 1 if self.prefix else 0
        # Keys ending in "/" are folder markers made by some S3 consoles, not objects.
        return sorted(key[start:] for key in self._iter_keys(prefix) if not key.endswith("/"))

    def delete_prefix(self, prefix: str) -> None:
        keys = list(self._iter_keys(prefix))
        with self._errors(prefix):
            for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                batch = [{"Key": k} for k in keys[i : i + 1000]]
                response = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                if response.get("Errors"):
                    first = response["Errors"][0]
                    uri = f"s3://{self.bucket}/{first.get('Key')}"
                    raise StorageError(
                        f"could not delete {uri}: {first.get('Code')}: {first.get('Message')}", uri
                    )

    def upload_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        if not Path(local_path).is_file():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(local_path))
        # boto3's transfer manager does multipart uploads for large model weights.
        with self._errors(key):
            self._client.upload_file(os.fspath(local_path), self.bucket, self._key(key))

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        # The transfer manager writes to a temp name and renames, so a failed
        # download leaves no truncated file behind.
        with self._errors(key):
            self._client.download_file(self.bucket, self._key(key), os.fspath(local_path))

    @contextmanager
    def _writer(self, key: str) -> Iterator[BinaryIO]:
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buffer:
            yield buffer  # type: ignore[misc]
            buffer.seek(0)
            with self._errors(key):
                self._client.upload_fileobj(buffer, self.bucket, self._key(key))

    @contextmanager
    def _reader(self, key: str) -> Iterator[BinaryIO]:
        # Read the whole object first so that a dropped connection surfaces
        # here as a StorageError rather than halfway through the caller's loop.
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buffer:
            with self._errors(key):
                body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
                shutil.copyfileobj(body, buffer, 1024 * 1024)
            buffer.seek(0)
            yield buffer  # type: ignore[misc]


# ------------------------------------------------------------- opening by URI


def _local_path(uri: str) -> str:
    """The filesystem path of a `file://` URI or a plain path."""
    if "://" not in uri:
        return uri
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(
            f"file URI {uri!r} names host {parsed.netloc!r}; use file:///absolute/path (three slashes)"
        )
    return url2pathname(parsed.path)


def _s3_location(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ValueError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/prefix")
    return parsed.netloc, parsed.path.strip("/")


def _scheme(uri: str) -> str:
    if not uri:
        # An unset setting must not silently mean "the current directory".
        raise ValueError("storage URI is empty")
    return urlparse(uri).scheme.lower() if "://" in uri else "file"


def open_store(uri: str | os.PathLike[str], endpoint_url: str | None = None) -> Store:
    """The store at `uri`: `file:///abs/path`, a plain local path, or `s3://bucket/prefix`."""
    uri = os.fspath(uri)
    scheme = _scheme(uri)
    if scheme == "file":
        return LocalStore(_local_path(uri))
    if scheme == "s3":
        bucket, prefix = _s3_location(uri)
        return S3Store(bucket, prefix, endpoint_url=_resolve_endpoint(endpoint_url))
    raise ValueError(
        f"unsupported storage URI {uri!r}: expected file:///path, a local path, or s3://bucket/prefix"
    )


def read_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    """The content of a single object given by its full URI (local path, file:// or s3://)."""
    uri = os.fspath(uri)
    scheme = _scheme(uri)
    if scheme == "file":
        path = Path(_local_path(uri))
        return LocalStore(path.parent).get_bytes(path.name)
    if scheme == "s3":
        bucket, key = _s3_location(uri)
        return S3Store(bucket, endpoint_url=_resolve_endpoint(endpoint_url)).get_bytes(key)
    raise ValueError(
        f"unsupported storage URI {uri!r}: expected file:///path, a local path, or s3://bucket/key"
    )


def read_text(uri: str, endpoint_url: str | None = None) -> str:
    """Like `read_bytes`, decoded as UTF-8 (gunzipped first when `uri` ends with .gz)."""
    data = read_bytes(uri, endpoint_url)
    if uri.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8")


# ---------------------------------------------------------- stage publication


def _manifest_key(prefix: str) -> str:
    prefix = _clean_key(prefix)  # a stage always has a prefix; "" would be the whole run
    return f"{prefix}/{MANIFEST}"


def publish(store: Store, prefix: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Mark the stage at `prefix` done by writing its manifest; call after all artifacts are written.

    Returns the manifest as written, with `published_at` (UTC, ISO 8601) added.
    """
    written = dict(manifest)
    written["published_at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    store.put_json(_manifest_key(prefix), written)
    return written


def is_done(store: Store, prefix: str) -> bool:
    return store.exists(_manifest_key(prefix))


def read_manifest(store: Store, prefix: str) -> dict[str, Any] | None:
    """The stage's manifest, or None while the stage is not done."""
    try:
        return store.get_json(_manifest_key(prefix))
    except FileNotFoundError:
        return None


JOURNAL = "journal"  # <stage>/journal/: what a stage already paid for (teacher replies); survives a rerun
PARTS = "parts"      # <stage>/parts/<part>/: one shard's artifacts and manifest; a finished part survives a rerun


def clear_stage(store: Store, prefix: str, *, force: bool = False) -> bool:
    """Delete what an interrupted run of the stage at `prefix` left behind; returns whether it deleted.

    A finished stage (manifest present) is left alone unless `force=True`, so a
    rerun can call this unconditionally without losing finished work. Two things
    of an unfinished stage are kept too, because they are finished work: every
    `journal/` in it (requests already paid for) and every part under `parts/` that has
    its own manifest (a shard that is done). `force=True` deletes everything.
    """
    if not prefix.strip("/"):
        raise ValueError("clear_stage needs a stage prefix; an empty one would delete the whole run")
    key = _manifest_key(prefix)
    if store.exists(key):
        if not force:
            return False
        # Manifest first: if deletion stops halfway, the stage reads as
        # unfinished rather than as done with artifacts missing.
        store.delete(key)
    if force:
        store.delete_prefix(prefix)
        return True
    base = prefix.strip("/") + "/"
    keys = store.list(prefix)
    done_parts = {k[len(base):].split("/")[1] for k in keys
                  if k.startswith(base + PARTS + "/") and k.count("/") == base.count("/") + 2
                  and k.endswith("/" + MANIFEST)}

    def kept(k: str) -> bool:
        rest = k[len(base):].split("/")
        if JOURNAL in rest[:-1]:  # the stage's journal, or one of its parts'
            return True
        return rest[0] == PARTS and len(rest) > 2 and rest[1] in done_parts

    if not any(kept(k) for k in keys):
        store.delete_prefix(prefix)  # one call: fast on S3, and removes in-flight local writes too
        return True
    for k in keys:
        if not kept(k):
            store.delete(k)
    return True


def list_manifests(store: Store) -> dict[str, dict[str, Any]]:
    """Every finished stage under `store`: stage prefix (e.g. "iter-000/train") -> its manifest.

    A `manifest.json` inside a finished stage's folder (say, shipped with
    model files) belongs to that stage's artifacts and is not a stage itself;
    nor is a part's (`<stage>/parts/<i>/manifest.json`) of a sharded stage.
    """
    suffix = "/" + MANIFEST
    prefixes = [key[: -len(suffix)] for key in store.list() if key.endswith(suffix)]
    prefixes = [p for p in prefixes if p.split("/")[-2:-1] != [PARTS]]
    stages: dict[str, dict[str, Any]] = {}
    # Shallowest first, so a stage is known before anything nested in it.
    for prefix in sorted(prefixes, key=lambda p: p.count("/")):
        if any(prefix.startswith(stage + "/") for stage in stages):
            continue
        manifest = read_manifest(store, prefix)
        if manifest is not None:  # deleted between listing and reading
            stages[prefix] = manifest
    return dict(sorted(stages.items()))
