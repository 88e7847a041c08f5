"""One object-store interface over a local folder or S3 (boto3; MinIO works too).

`open_store(uri)` takes `/path`, `file:///path` or `s3://bucket/prefix`. Keys are
relative, '/'-separated and stay inside the store: no `..`, no leading '/'.
S3 settings come from the standard places: credentials from the AWS variables /
profile, the endpoint from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (boto3
reads both itself). Timeouts and retries are short so an unreachable endpoint
fails in seconds with a one-line `SemlayoutError`, not a hang.
"""

from __future__ import annotations

import builtins
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from semlayout.atomic import atomic_dir, atomic_write_bytes
from semlayout.errors import SemlayoutError

_TMP_RE = re.compile(r"^\..+\.tmp-")  # atomic_write_* temp files: never listed


def check_key(key: str, allow_empty: bool = False) -> str:
    """Return the normalised key or raise `SemlayoutError` for one that could escape the store."""
    if not isinstance(key, str):
        raise SemlayoutError(f"object key must be a string, got {type(key).__name__}")
    if key == "" and allow_empty:
        return ""
    if not key or key.strip("/") == "":
        raise SemlayoutError(
            "object key is empty; expected a relative path such as 'objects/ab12.png'"
        )
    if key.startswith("/") or key.startswith("\\") or re.match(r"^[A-Za-z]:", key):
        raise SemlayoutError(
            f"object key '{key}' is absolute; expected a path relative to the store"
        )
    if "\\" in key or "\x00" in key:
        raise SemlayoutError(f"object key '{key}' holds a backslash or NUL; use '/' separators")
    parts = key.split("/")
    if any(p in ("..", ".") for p in parts):
        raise SemlayoutError(
            f"object key '{key}' contains '.' or '..'; keys must stay inside the store"
        )
    return key


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Store(ABC):
    """Keys relative to the store root (`uri`)."""

    uri: str

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with `prefix` (a plain string prefix), sorted."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    @abstractmethod
    def modified(self, prefix: str = "") -> dict[str, float]:
        """{key: last-modified time (UNIX seconds)} of every key starting with `prefix`."""

    def url_for(self, key: str) -> str:
        return self.uri.rstrip("/") + "/" + check_key(key)

    def download_tree(self, prefix: str, local_dir: str | os.PathLike[str]) -> Path:
        """Copy every object under the folder `prefix` to `local_dir/<key relative to prefix>`."""
        prefix = check_key(prefix.rstrip("/"), allow_empty=True)
        base = prefix + "/" if prefix else ""
        dest = Path(local_dir)
        keys = self.list(base)
        if not keys:
            raise SemlayoutError(f"nothing stored under {self.uri.rstrip('/')}/{base}")
        dest.mkdir(parents=True, exist_ok=True)
        for key in keys:
            rel = key[len(base) :]
            if not rel or rel.endswith("/"):
                continue  # "directory marker" objects some tools create
            out = dest / rel
            atomic_write_bytes(out, self.get_bytes(key))
        return dest

    def upload_tree(
        self, local_dir: str | os.PathLike[str], prefix: str = ""
    ) -> builtins.list[str]:
        """Upload every file under `local_dir` to `prefix/<relative path>`; returns the keys."""
        src = Path(local_dir)
        if not src.is_dir():
            raise SemlayoutError(f"folder to upload not found: {src}")
        prefix = check_key(prefix.rstrip("/"), allow_empty=True)
        keys = []
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            key = _join(prefix, path.relative_to(src).as_posix())
            self.put_bytes(key, path.read_bytes())
            keys.append(key)
        return keys


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if _TMP_RE.match(name):
                    continue
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise SemlayoutError(f"no object '{key}' in {self.uri}")
        return path.read_bytes()

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self._path(key), data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink()

    def modified(self, prefix: str = "") -> dict[str, float]:
        out = {}
        for key in self.list(prefix):
            try:
                out[key] = self._path(key).stat().st_mtime
            except FileNotFoundError:  # deleted since the listing
                continue
        return out


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", client: Any = None):
        if not bucket:
            raise SemlayoutError("S3 URI has an empty bucket name; expected s3://BUCKET/PREFIX")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            raise SemlayoutError(
                f"S3 bucket name '{bucket}' is not valid: "
                "3-63 characters, lowercase letters, digits, '.' and '-'"
            )
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/"), allow_empty=True) if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                connect_timeout=float(os.environ.get("SEMLAYOUT_S3_CONNECT_TIMEOUT", "3")),
                read_timeout=float(os.environ.get("SEMLAYOUT_S3_READ_TIMEOUT", "30")),
                retries={"max_attempts": 2, "mode": "standard"},
            )
            # endpoint_url left to boto3: it honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.
            self._client = boto3.session.Session().client("s3", config=cfg)
        return self._client

    def _full(self, key: str) -> str:
        return _join(self.prefix, check_key(key))

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """Run one boto3 call, turning the usual environment problems into one-line errors."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"s3://{self.bucket}"
        try:
            return fn(**kwargs)
        except (NoCredentialsError, PartialCredentialsError):
            raise SemlayoutError(
                f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)"
            ) from None
        except EndpointConnectionError as err:
            raise SemlayoutError(
                f"cannot reach the S3 endpoint for {where} "
                f"({err.kwargs.get('endpoint_url', '?')}): "
                "check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and the network"
            ) from None
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket" or (
                err.operation_name == "HeadBucket" and code in ("404", "NotFound")
            ):
                raise SemlayoutError(f"S3 bucket '{self.bucket}' does not exist ({what})") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise SemlayoutError(f"access denied to {where} ({what}): {code}") from None
            raise SemlayoutError(f"S3 error on {where} ({what}): {code} {err}") from None
        except BotoCoreError as err:
            raise SemlayoutError(f"S3 error on {where} ({what}): {err}") from None

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self.modified(prefix))

    def modified(self, prefix: str = "") -> dict[str, float]:
        full = _join(self.prefix, prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        if prefix.endswith("/") and full and not full.endswith("/"):
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")

        def _all() -> dict[str, float]:
            keys: dict[str, float] = {}
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for o in page.get("Contents", []):
                    keys[o["Key"][strip:]] = o["LastModified"].timestamp()
            return keys

        return dict(self._call(f"list {full or '/'}", _all))

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        full = self._full(key)

        def _get() -> bytes:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise SemlayoutError(f"no object '{key}' in {self.uri}") from None
                raise

        return self._call(f"get {full}", _get)

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        self._call(f"put {full}", self.client.put_object, Bucket=self.bucket, Key=full, Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        full = self._full(key)

        def _head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=full)
                return True
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    # a missing bucket also answers 404 on HEAD: tell the two apart
                    self.client.head_bucket(Bucket=self.bucket)
                    return False
                raise

        return bool(self._call(f"head {full}", _head))

    def delete(self, key: str) -> None:
        full = self._full(key)
        self._call(f"delete {full}", self.client.delete_object, Bucket=self.bucket, Key=full)


def parse_uri(uri: str) -> tuple[str, str, str]:
    """-> (scheme, bucket_or_empty, path_or_prefix) for '/p', 'file:///p', 's3://b/p'."""
    if not isinstance(uri, str) or not uri.strip():
        raise SemlayoutError("storage URI is empty; expected a folder path or s3://BUCKET/PREFIX")
    if "://" not in uri:
        return "file", "", uri
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SemlayoutError(f"file URI '{uri}' names a host; expected file:///absolute/path")
        return "file", "", unquote(parsed.path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise SemlayoutError(
                f"S3 URI '{uri}' has an empty bucket name; expected s3://BUCKET/PREFIX"
            )
        return "s3", parsed.netloc, parsed.path.strip("/")
    raise SemlayoutError(
        f"unsupported storage URI '{uri}': expected a folder path, file:// or s3://"
    )


def open_store(uri: str) -> Store:
    scheme, bucket, path = parse_uri(uri)
    if scheme == "file":
        return LocalStore(path)
    return S3Store(bucket, path)


def fetch_to_local(uri: str, dest: str | os.PathLike[str]) -> Path:
    """A local folder/file is returned as is; an `s3://` tree is copied to `dest` (atomically)."""
    scheme, _bucket, path = parse_uri(uri)
    if scheme == "file":
        p = Path(path).expanduser()
        if not p.exists():
            raise SemlayoutError(f"not found: {p}")
        return p
    store = open_store(uri)
    assert isinstance(store, S3Store)
    dest = Path(dest)
    if store.list("") or not store.prefix:
        with atomic_dir(dest) as tmp:
            store.download_tree("", tmp)
        return dest
    # the URI names one object, not a folder
    parent = S3Store(store.bucket, store.prefix.rsplit("/", 1)[0] if "/" in store.prefix else "")
    name = store.prefix.rsplit("/", 1)[-1]
    data = parent.get_bytes(name)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest / name, data)
    return dest / name
