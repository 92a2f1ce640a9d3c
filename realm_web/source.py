"""Byte-range sources: where GGUF bytes come from (a local file, memory, an HTTP server).

Everything above this module reads through `read(offset, length)`, so a model is never loaded whole: the
GGUF header is parsed from a few small reads and weights are streamed to the GPU in bounded chunks.
Pure Python (no numpy) because it also runs under Pyodide, where the browser supplies its own
`AsyncSource` over JS `fetch`; that is why the protocols are as small as they are.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
import urllib.error
import urllib.request
from typing import BinaryIO, Protocol, runtime_checkable

from realm_web.errors import SourceError


@runtime_checkable
class Source(Protocol):
    """A read-only, random-access run of `size` bytes."""

    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes starting at `offset`, or SourceError (never fewer bytes)."""
        ...


@runtime_checkable
class AsyncSource(Protocol):
    """The async form of `Source`: what a browser `fetch` can implement without blocking the page."""

    size: int

    async def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes starting at `offset`, or SourceError (never fewer bytes)."""
        ...


def check_range(size: int, offset: int, length: int, name: str) -> None:
    """Refuse a read outside [0, size): sources must never pad, wrap or silently return less."""
    if offset < 0 or length < 0:
        raise SourceError(f"{name}: invalid read of {length} bytes at offset {offset}")
    if offset + length > size:
        raise SourceError(f"{name}: read of {length} bytes at offset {offset} goes past the end (size {size} bytes)")


def check_length(data: bytes, offset: int, length: int, name: str) -> bytes:
    """Turn a short read (a file truncated under us, a server closing early) into a SourceError."""
    if len(data) != length:
        raise SourceError(f"{name}: short read at offset {offset}: asked for {length} bytes, got {len(data)}")
    return data


class BytesSource:
    """A source over bytes already in memory (tests, small files fetched whole)."""

    def __init__(self, data: bytes | bytearray | memoryview, name: str = "<bytes>"):
        self._data = bytes(data)
        self.size = len(self._data)
        self.name = name

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length, self.name)
        return self._data[offset : offset + length]

    def __repr__(self) -> str:
        return f"BytesSource({self.name}, size={self.size})"


class FileSource:
    """A local file, opened once; reads are positioned (seek + read under a lock, so threads may share it)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        try:
            self._file: BinaryIO | None = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise SourceError(f"cannot open {self.path!r}: {e.strerror or e}") from e
        self.size = os.fstat(self._file.fileno()).st_size
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length, self.path)
        with self._lock:
            if self._file is None:
                raise SourceError(f"{self.path}: read from a closed FileSource")
            try:
                self._file.seek(offset)
                data = self._file.read(length)
            except OSError as e:
                raise SourceError(f"{self.path}: read failed at offset {offset}: {e}") from e
        return check_length(data, offset, length, self.path)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileSource({self.path!r}, size={self.size})"


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class HTTPSource:
    """A file on an HTTP(S) server, read with `Range: bytes=a-b` requests (RFC 9110 §14).

    The size comes from HEAD's Content-Length, or, where HEAD is refused or has no length, from the
    Content-Range of a one-byte range request. A server that ignores Range (200 and the whole body) is an
    error: silently downloading a multi-GB model for a 64 KiB header read is worse than failing.
    Each instance builds its own opener so proxy settings are read when the source is made.
    """

    def __init__(self, url: str, *, timeout: float = 30.0, headers: dict[str, str] | None = None):
        self.url = url
        self.timeout = timeout
        self._headers = dict(headers or {})
        self._opener = urllib.request.build_opener()
        self.size = self._probe_size()

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length, self.url)
        if length == 0:
            return b""  # "bytes=a-(a-1)" is not a valid range
        with self._request("GET", {"Range": f"bytes={offset}-{offset + length - 1}"}) as resp:
            self._expect_partial(resp, offset)
            try:
                data = resp.read(length)
            except (OSError, http.client.HTTPException) as e:
                raise SourceError(f"{self.url}: reading bytes at offset {offset} failed: {e}") from e
        return check_length(data, offset, length, self.url)

    def _probe_size(self) -> int:
        try:
            with self._request("HEAD", {}) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit():
                    return int(length)
        except SourceError as e:
            if not isinstance(e.__cause__, urllib.error.HTTPError):
                raise  # unreachable: a second try would only wait out another timeout
            # some servers (signed CDN URLs) refuse HEAD; the range probe below still works
        with self._request("GET", {"Range": "bytes=0-0"}) as resp:
            return self._expect_partial(resp, 0)

    def _expect_partial(self, resp: http.client.HTTPResponse, offset: int) -> int:
        """Check a 206 answer starts at `offset`; return the total size from its Content-Range."""
        if resp.status != 206:
            raise SourceError(
                f"{self.url}: server ignored the Range header (HTTP {resp.status} instead of 206 Partial "
                "Content); refusing to download the whole file"
            )
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if m is None or m.group(3) == "*" or int(m.group(1)) != offset:
            raise SourceError(
                f"{self.url}: bad Content-Range {resp.headers.get('Content-Range')!r} for a range starting at {offset}"
            )
        return int(m.group(3))

    def _request(self, method: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        # identity: a compressed body would make byte offsets meaningless.
        all_headers = {**self._headers, "Accept-Encoding": "identity", **headers}
        try:
            req = urllib.request.Request(self.url, method=method, headers=all_headers)
            return self._opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            e.close()
            raise SourceError(f"{self.url}: HTTP {e.code} {e.reason} on {method}") from e
        except urllib.error.URLError as e:
            raise SourceError(f"{self.url}: cannot connect: {e.reason}") from e
        except ValueError as e:  # urllib's answer to a malformed URL
            raise SourceError(f"bad URL {self.url!r}: {e}") from e
        except (OSError, http.client.HTTPException) as e:
            raise SourceError(f"{self.url}: {method} failed: {e}") from e

    def __repr__(self) -> str:
        return f"HTTPSource({self.url!r}, size={self.size})"


class AsyncFromSync:
    """Present a sync `Source` as an `AsyncSource`, so async code (the browser path) can run on files.

    The read runs inline: local reads are short, and Pyodide has no threads to offload to.
    """

    def __init__(self, source: Source):
        self.source = source
        self.size = source.size

    async def read(self, offset: int, length: int) -> bytes:
        return self.source.read(offset, length)

    def __repr__(self) -> str:
        return f"AsyncFromSync({self.source!r})"


def open_source(path_or_url: str | os.PathLike[str]) -> Source:
    """A FileSource for a path, an HTTPSource for an http:// or https:// URL."""
    if isinstance(path_or_url, str) and "://" in path_or_url:
        scheme = path_or_url.split("://", 1)[0].lower()
        if scheme in ("http", "https"):
            return HTTPSource(path_or_url)
        raise SourceError(f"unsupported URL scheme {scheme!r} in {path_or_url!r} (use http(s) or a path)")
    return FileSource(path_or_url)
