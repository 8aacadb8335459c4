"""Run storage: a local path, s3:// or gs://, as a `pyarrow.fs` filesystem for Ray Train.

Credentials come only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / an
instance role; GOOGLE_APPLICATION_CREDENTIALS / workload identity), never from the config: a
storage_path that carries keys in its query string is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from raylm.errors import UserError

_SECRET_PARAMS = ("access_key", "secret_key", "session_token", "access_token", "credentials")


def is_remote(path: str) -> bool:
    """An object store URI (s3://, gs://, ...) rather than a path on this machine."""
    return "://" in path


def _endpoint() -> tuple[str | None, str]:
    """(host[:port], scheme) of an S3-compatible endpoint from AWS_ENDPOINT_URL(_S3)."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None, "https"
    parsed = urlparse(url if is_remote(url) else f"https://{url}")
    return parsed.netloc, parsed.scheme or "https"


def s3_filesystem() -> Any:
    import pyarrow.fs as pafs

    endpoint, scheme = _endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # allow_delayed_open: small files (metrics, markers, small checkpoints) go up in one PutObject
    # instead of a multipart upload -- fewer round trips, and S3-compatible stores with broken
    # CompleteMultipartUpload responses (moto 5.2.1, getmoto/moto#10055) still take them.
    kw: dict[str, Any] = {"scheme": scheme, "allow_delayed_open": True}
    if endpoint:
        kw["endpoint_override"] = endpoint
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def resolve(storage_path: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path within it) for a local path, s3://bucket/prefix or gs://bucket/prefix."""
    import pyarrow.fs as pafs

    parsed = urlparse(storage_path)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # 'C:\...' on Windows
        local = parsed.path if parsed.scheme == "file" else storage_path
        return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    if any(k in _SECRET_PARAMS for k in parse_qs(parsed.query)):
        raise UserError(
            f"storage_path {parsed.scheme}://{parsed.netloc}{parsed.path}: credentials in the URL",
            hint="remove them; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a Secret on Kubernetes)",
        )
    path = f"{parsed.netloc}{parsed.path}".rstrip("/")
    if not parsed.netloc:
        raise UserError(f"storage_path '{storage_path}': name a bucket, e.g. {parsed.scheme}://bucket/runs")
    if parsed.scheme in ("s3", "s3a"):
        return s3_filesystem(), path
    if parsed.scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem(), path
    raise UserError(f"storage_path '{storage_path}': unsupported scheme {parsed.scheme}:// (use a path, s3:// or gs://)")


def run_storage(storage_path: str) -> dict[str, Any]:
    """Keyword arguments for `ray.train.RunConfig`: storage_path (+ storage_filesystem for buckets)."""
    fs, path = resolve(storage_path)
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        return {"storage_path": path}
    return {"storage_path": path, "storage_filesystem": fs}
