"""fsspec access in one place: nothing below this module knows which store a URI lives on.

Flaky storage. What the libraries already retry, measured through a fault-injecting proxy
(tests/support/flaky_proxy.py) with s3fs 2026.9, aiobotocore 3.10, botocore 1.43, aiohttp 3.14:

- botocore retries each request on 500/502/503/504 and on dropped connections; its default
  (`legacy` mode) is 5 attempts with uncapped exponential backoff: a 500 or 503 that lasts
  ends after 5 attempts (~5-10 s). Note botocore's `max_attempts` counts retries;
  `total_max_attempts` counts attempts.
- s3fs adds its own retries (5 calls) only for connection-level errors and timeouts (and 503
  `SlowDown`), not for a 500 or a 503 `ServiceUnavailable`; aiohttp resends a request once when
  a kept-alive connection drops. A 500/503 ends as an OSError without the URI; dropped
  connections (50 attempts, ~40 s) end as botocore's ConnectionClosedError, not an OSError.

What vidbatch adds:

- For S3 it asks botocore for `{"mode": "standard", "total_max_attempts": 8}` (jittered
  backoff capped at 20 s) unless storage_options set `config_kwargs: {retries: ...}` or the
  environment sets AWS_RETRY_MODE / AWS_MAX_ATTEMPTS. This covers every S3 call made through
  `filesystem`, on Ray workers too.
- `retrying(fn, uri)` retries a whole step (a listing, a staged write, a move into place, a
  read) with capped, jittered exponential backoff (`POLICY`) when the error looks transient,
  then raises StorageError: one line naming the URI, never credentials. Used by `open_input`
  (reads), catalog (listing), sink (the commit) and history (index state, run records),
  whose steps are idempotent.

Storage that stays down therefore fails a step after roughly POLICY.attempts x 35 s for server
errors, longer for dropped connections (s3fs's and aiohttp's retries multiply botocore's).
"""

from __future__ import annotations

import logging
import os
import posixpath
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from vidbatch.errors import describe

_SECRET_KEY = re.compile(
    r"secret|token|passw|key|credential|session|auth|connection|sas|signature",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_USERINFO_SECRET = re.compile(r"://([^/@:\s]+):([^/@\s]+)@")
# Query parameters that sign a URL (S3/GCS presigned, CloudFront, Azure SAS): never stored.
_SIGNING_PARAMS = re.compile(
    r"^(x-amz-.*|x-goog-.*|awsaccesskeyid|signature|expires|key-pair-id|policy|"
    r"sig|se|sp|sv|sr|st|spr|skoid|sktid|skt|ske|sks|skv|token)$",
    re.IGNORECASE,
)
_SIGNED_QUERY = re.compile(
    r"((?:X-Amz-(?:Credential|Signature|Security-Token)|AWSAccessKeyId|Signature)=)[^&\s\"']+",
    re.IGNORECASE,
)
# Stores without real folders: nothing needs creating before a write.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})
S3_RETRIES = {"mode": "standard", "total_max_attempts": 8}

log = logging.getLogger("vidbatch.storage")
T = TypeVar("T")


@dataclass
class RetryPolicy:
    """Operation-level retries on top of the client's own: attempts, then base * 2**n capped."""

    attempts: int = 4
    base_s: float = 1.0
    cap_s: float = 15.0


POLICY = RetryPolicy()


class StorageError(OSError):
    """Storage stayed unreachable through every retry. The message is one line naming the URI."""


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None):
    """(filesystem, path) for a URI; local paths become absolute."""
    from fsspec.core import url_to_fs  # here: a decode child that reads local files never needs it

    if "://" not in uri:
        uri = os.path.abspath(uri)
    return url_to_fs(uri, **with_retry_defaults(uri, storage_options))


def with_retry_defaults(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """storage_options plus vidbatch's botocore retry settings for S3, unless the user set them."""
    options = dict(storage_options or {})
    env = "AWS_RETRY_MODE" in os.environ or "AWS_MAX_ATTEMPTS" in os.environ
    if protocol(uri) in ("s3", "s3a") and not env:
        config = dict(options.get("config_kwargs") or {})
        if "retries" not in config:
            config["retries"] = dict(S3_RETRIES)
            options["config_kwargs"] = config
    return options


def protocol(uri: str) -> str:
    """The URI's scheme, lower case (`s3`, `gs` ...); `file` for a plain path."""
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def options_for(
    target: str, source: str, storage_options: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """The source's storage options for writing `target` when both are on the same kind of
    store (the index's S3 credentials for a report on S3), else none."""
    return storage_options if protocol(target) == protocol(source) else None


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def uri_of(fs: Any, path: str) -> str:
    """The URI a user would recognize for a filesystem path (local paths stay paths)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def needs_folders(fs: Any) -> bool:
    """Whether parent folders must exist before a write (not on object stores)."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return not protocols & OBJECT_STORES


# What delta-rs (object_store) says when a request failed after its own retries: a 5xx, a
# throttle, a dropped or timed out connection. Its other errors (a concurrent commit, a
# schema mismatch, a missing table) have their own classes or are not about the storage.
_OBJECT_STORE_TRANSIENT = re.compile(
    r"Object Store error.*(non-2xx status code: (5\d\d|429)|error sending request|"
    r"timed? ?out|connection|SlowDown)",
    re.IGNORECASE | re.DOTALL,
)


def transient(exc: BaseException) -> bool:
    """Worth retrying: a server error, throttling, a dropped or timed out connection."""
    if isinstance(exc, StorageError):  # an inner operation already retried and gave up
        return False
    if isinstance(
        exc,
        (
            FileNotFoundError,
            PermissionError,
            IsADirectoryError,
            NotADirectoryError,
            FileExistsError,
        ),
    ):
        return False
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, Mapping):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or "Throttl" in code or code == "SlowDown"
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    if type(exc).__name__ == "DeltaError":  # delta-rs: only its object-store failures
        return bool(_OBJECT_STORE_TRANSIENT.search(str(exc)))
    module = type(exc).__module__.split(".", 1)[0]
    return module in ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "fsspec")


def scrub(text: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Text with credentials removed: URL user info, signed-URL parameters, secret values."""
    text = _SIGNED_QUERY.sub(r"\1***", _URL_USERINFO.sub("***@", text))
    for value in _secret_values(storage_options):
        text = text.replace(value, "***")
    return text


def _secret_values(options: Any, key: str = "") -> list[str]:
    """Every secret a set of storage_options holds, by key name (secret, token, Authorization,
    connection_string ...) and by value (the password inside an endpoint URL)."""
    if isinstance(options, Mapping):
        return [v for k, item in options.items() for v in _secret_values(item, str(k))]
    if isinstance(options, (list, tuple)):
        return [v for item in options for v in _secret_values(item, key)]
    if not isinstance(options, str) or len(options) < 4:
        return []
    found = [options] if _SECRET_KEY.search(key) else []
    found += [password for _, password in _USERINFO_SECRET.findall(options) if len(password) >= 4]
    # Connection strings (Azure's "AccountName=a;AccountKey=..."): each secret part alone.
    for part in options.split(";") if ";" in options else ():
        name, _, value = part.partition("=")
        if value and len(value) >= 4 and _SECRET_KEY.search(name):
            found.append(value.strip())
    return found


def retrying(
    fn: Callable[[], T],
    uri: str,
    *,
    action: str = "",
    storage_options: Mapping[str, Any] | None = None,
    policy: RetryPolicy | None = None,
) -> T:
    """fn(), retried on transient storage errors with capped, jittered exponential backoff.

    Only for idempotent steps. When every attempt fails, raises StorageError:
    "storage: <uri> unreachable after N attempts (<action>): <last error>".
    """
    policy = policy or POLICY
    attempts = max(1, policy.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
            reason = scrub(describe(exc), storage_options)
            if attempt == attempts:
                doing = f" ({action})" if action else ""
                message = (
                    f"storage: {scrub(uri)} unreachable after {attempts} attempts{doing}: {reason}"
                )
                raise StorageError(message) from exc
            delay = min(policy.cap_s, policy.base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning(
                "storage: %s failed (%s), attempt %d of %d, retrying in %.1fs",
                scrub(uri),
                reason,
                attempt,
                attempts,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


class RetryingReader:
    """A read-only file whose reads are retried: a failed read leaves the position unchanged."""

    def __init__(self, handle: Any, uri: str, storage_options: Mapping[str, Any] | None) -> None:
        self._handle, self._uri, self._options = handle, uri, storage_options

    def read(self, size: int = -1) -> bytes:
        position = self._handle.tell()

        def attempt() -> bytes:
            self._handle.seek(position)
            return self._handle.read(size)

        return retrying(attempt, self._uri, action="read", storage_options=self._options)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RetryingReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:  # size, info, ... of the underlying file
        if name == "write":
            raise AttributeError(name)
        return getattr(self._handle, name)


def open_input(uri: str, storage_options: Mapping[str, Any] | None = None, **kwargs):
    """A readable binary file object: a plain file locally, ranged reads on object stores.

    On object stores, opening and every read are retried (`retrying`)."""
    if is_local(uri):
        return open(local_path(uri), "rb")
    fs, path = filesystem(uri, storage_options)
    handle = retrying(
        lambda: fs.open(path, "rb", **kwargs), uri, action="open", storage_options=storage_options
    )
    return RetryingReader(handle, uri, storage_options)


def normalize_uri(uri: str) -> str:
    """One spelling per object: `s3://b//a.mp4` and `s3://b/./a.mp4` are `s3://b/a.mp4`; local
    paths become absolute (a `file://` URI becomes its path)."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" not in uri:
        return os.path.normpath(os.path.abspath(uri))
    scheme, rest = uri.split("://", 1)
    if scheme.lower() in ("http", "https"):
        parts = urlsplit(uri)
        path = posixpath.normpath(parts.path) if parts.path else ""
        return urlunsplit((parts.scheme.lower(), parts.netloc, path, parts.query, ""))
    return f"{scheme.lower()}://{posixpath.normpath(rest).lstrip('/')}"


def public_uri(uri: str) -> str:
    """The URI to store and show: no user:password, no URL-signing query parameters."""
    uri = _URL_USERINFO.sub("", uri)
    if "?" not in uri or not uri.lower().startswith(("http://", "https://")):
        return uri  # elsewhere "?" is part of a file or key name
    parts = urlsplit(uri)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    kept = [(k, v) for k, v in query if not _SIGNING_PARAMS.match(k)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))


def redact(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of storage_options safe to print or record: secret-looking values hidden."""

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(str(k), v) for k, v in value.items()}
        if _SECRET_KEY.search(key) and value not in (None, ""):
            return "***"
        return scrub(value) if isinstance(value, str) else value

    return {k: clean(str(k), v) for k, v in (storage_options or {}).items()}


__all__ = [
    "POLICY",
    "RetryPolicy",
    "RetryingReader",
    "StorageError",
    "filesystem",
    "is_local",
    "join",
    "local_path",
    "needs_folders",
    "normalize_uri",
    "public_uri",
    "open_input",
    "options_for",
    "protocol",
    "redact",
    "retrying",
    "scrub",
    "transient",
    "uri_of",
    "with_retry_defaults",
]
