"""Local paths and object store URIs (s3://, gs://) behind one pyarrow.fs interface.

Credentials come from the environment only (AWS_ACCESS_KEY_ID, ..., or the instance's role);
an S3-compatible endpoint (MinIO, moto, R2) from AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import fnmatch
import os

import pyarrow.fs as pafs

from raylm.cluster.storage import is_remote
from raylm.errors import UserError

# Environment a worker needs to reach the same object store as the driver.
OBJECT_STORE_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AWS_REGION", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS")
_WILDCARDS = "*?["


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// / gs:// URI."""
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        kw: dict = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        return pafs.S3FileSystem(**kw), uri[len("s3://"):]
    if is_remote(uri):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _uri(uri: str, path: str) -> str:
    return f"{uri.split('://', 1)[0]}://{path}" if is_remote(uri) else path


def _hidden(path: str) -> bool:
    return any(part.startswith((".", "_")) for part in path.split("/") if part)


def list_files(source: str) -> list[tuple[str, int]]:
    """Expand a file, directory or glob (local or object store) into sorted (uri, size) pairs."""
    fs, path = filesystem(source)
    wild = next((i for i, c in enumerate(path) if c in _WILDCARDS), -1)
    base = path if wild < 0 else path[: path.rfind("/", 0, wild) + 1].rstrip("/") or "/"
    try:
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File and wild < 0:
            found = [info]
        elif info.type == pafs.FileType.Directory:
            found = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                     if i.type == pafs.FileType.File and not _hidden(i.path[len(base):])]
            if wild >= 0:
                found = [i for i in found if _match(i.path, path)]
        else:
            found = []
    except OSError as err:
        raise UserError(f"data.source: cannot list '{source}': {err}", hint="check the path and credentials") from None
    if not found:
        raise UserError(f"data.source: no files match '{source}'",
                        hint="check the path or glob (e.g. 'corpus/**/*.jsonl')")
    return sorted((_uri(source, i.path), i.size) for i in found)


def _match(path: str, pattern: str) -> bool:
    # `**/` matches zero or more directories, as in glob(recursive=True).
    return fnmatch.fnmatchcase(path, pattern) or ("**/" in pattern and fnmatch.fnmatchcase(path, pattern.replace("**/", "")))


def open_input(uri: str, offset: int = 0):
    """A seekable binary file (local or object store), positioned at `offset`."""
    fs, path = filesystem(uri)
    f = fs.open_input_file(path)
    if offset:
        f.seek(offset)
    return f


def worker_env() -> dict[str, str]:
    """Object store settings of the driver's environment, for workers started without them."""
    return {k: os.environ[k] for k in OBJECT_STORE_ENV if k in os.environ}
