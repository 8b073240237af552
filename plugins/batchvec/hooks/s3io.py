"""Small streaming helpers over a boto3 S3 client: nothing here holds a whole object in memory."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, wait
from types import TracebackType
from typing import Any

import orjson

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_PART_SIZE",
    "MIN_PART_SIZE",
    "S3LineWriter",
    "S3RangeFile",
    "delete_keys",
    "get_json",
    "iter_object_chunks",
    "list_keys",
    "list_objects",
    "put_json",
]

log = logging.getLogger(__name__)

DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20  # S3 (and SeaweedFS) refuse smaller parts, except the last one
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_PARTS = 10_000
# After this many parts the part size doubles, so a shard can never hit S3's 10,000-part
# limit (8 MiB x 1000 + 16 MiB x 1000 + ... reaches terabytes well before part 10,000).
_PARTS_PER_SIZE_STEP = 1000


class S3LineWriter:
    """Write one S3 object as a stream: multipart upload once it outgrows ``part_size``.

    Small objects are one ``put_object`` on close. With an ``executor``, parts upload in the
    background while the caller keeps producing (one part in flight per writer, so memory
    stays at most two parts). Any failure aborts the multipart upload so no orphaned parts
    are left billing storage. As a context manager: an exception in the block aborts, a
    clean exit closes (completes).
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        part_size: int = DEFAULT_PART_SIZE,
        content_type: str = "application/x-ndjson",
        executor: Executor | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:  # fail now, not at CompleteMultipartUpload
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes, got {part_size}")
        self.client, self.bucket, self.key = client, bucket, key
        self.part_size = part_size
        self.content_type = content_type
        self.bytes_written = 0
        self.closed = False
        self._executor = executor
        self._pending: Future[None] | None = None
        self._buf = bytearray()
        self._target = part_size
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    @property
    def parts(self) -> int:
        return len(self._parts)

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ValueError(f"write to closed writer for s3://{self.bucket}/{self.key}")
        self._buf += data
        self.bytes_written += len(data)
        if len(self._buf) >= self._target:
            self._guarded(self._next_part)

    def close(self) -> int:
        """Finish the object; returns its size in bytes. Closing twice is a no-op."""
        if not self.closed:
            self._guarded(self._finish)
            self.closed, self._upload_id = True, None  # done: a later abort() is a no-op
        return self.bytes_written

    def abort(self) -> None:
        """Drop the object being written; safe to call more than once."""
        self.closed = True
        self._buf = bytearray()
        pending, self._pending = self._pending, None
        if pending is not None and not pending.cancel():
            wait([pending])  # let an upload in flight finish before aborting under it
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except Exception:  # the original error matters more; S3 lifecycle rules clean up
            log.warning("abort of multipart upload s3://%s/%s failed", self.bucket, self.key,
                        exc_info=True)

    def _guarded(self, step: Any) -> None:
        try:
            step()
        except BaseException:
            self.abort()
            raise

    def _finish(self) -> None:
        if self._upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buf),
                                   ContentType=self.content_type)
            return
        if self._buf:
            # The last part goes inline: close() may itself run on the executor, and waiting
            # there for a task queued behind it would deadlock a full pool.
            self._next_part(inline=True)
        self._wait()
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def _next_part(self, inline: bool = False) -> None:
        if self._upload_id is None:
            resp = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type)
            self._upload_id = resp["UploadId"]
        self._wait()  # the previous part first: bounds memory and keeps parts in order
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise RuntimeError(f"s3://{self.bucket}/{self.key}: over {MAX_PARTS} parts")
        body, self._buf = bytes(self._buf), bytearray()
        if number % _PARTS_PER_SIZE_STEP == 0:
            self._target *= 2
        if self._executor is None or inline:
            self._send(number, body)
        else:
            self._pending = self._executor.submit(self._send, number, body)

    def _send(self, number: int, body: bytes) -> None:
        resp = self.client.upload_part(Bucket=self.bucket, Key=self.key,
                                       UploadId=self._upload_id, PartNumber=number, Body=body)
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> S3LineWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_object_chunks(
    client: Any, bucket: str, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE, start: int = 0
) -> Iterator[bytes]:
    """The object's bytes from ``start`` in chunks of at most ``chunk_size``, streamed from
    one GET (a ranged one past 0, so a resumed reader does not fetch what it skips)."""
    extra = {"Range": f"bytes={start}-"} if start else {}
    body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
    try:
        while chunk := body.read(chunk_size):
            yield chunk
    finally:
        body.close()


class S3RangeFile(io.RawIOBase):
    """A seekable read-only file over ranged GETs, for readers that need random access
    (Parquet reads its footer, then only the column chunks it needs)."""

    def __init__(self, client: Any, bucket: str, key: str, size: int | None = None) -> None:
        super().__init__()
        self.client, self.bucket, self.key = client, bucket, key
        if size is None:
            size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        self.size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        if end <= self._pos:
            return b""
        rng = f"bytes={self._pos}-{end - 1}"
        data = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=rng)["Body"].read()
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def list_objects(
    client: Any, bucket: str, prefix: str, page_size: int | None = None
) -> list[tuple[str, int]]:
    """``(key, size)`` of every object under ``prefix`` (all pages), sorted by key."""
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size or 1000})
    out = [(o["Key"], o["Size"]) for page in pages for o in page.get("Contents", ())]
    out.sort()
    return out


def list_keys(client: Any, bucket: str, prefix: str, page_size: int | None = None) -> list[str]:
    return [key for key, _ in list_objects(client, bucket, prefix, page_size)]


def delete_keys(client: Any, bucket: str, keys: Iterable[str]) -> int:
    """Delete keys in batches of 1000 (the API's limit); returns how many were asked for."""
    batch: list[dict[str, str]] = []
    total = 0

    def flush() -> None:
        resp = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if errors := resp.get("Errors"):
            raise RuntimeError(f"delete failed in s3://{bucket}: {errors[:3]}")

    for key in keys:
        batch.append({"Key": key})
        total += 1
        if len(batch) == 1000:
            flush()
            batch = []
    if batch:
        flush()
    return total


def put_bytes(client: Any, bucket: str, key: str, body: bytes,
              content_type: str | None = None) -> None:
    extra = {"ContentType": content_type} if content_type else {}
    client.put_object(Bucket=bucket, Key=key, Body=body, **extra)


def get_bytes(client: Any, bucket: str, key: str) -> bytes:
    """A small object whole (JSON documents, checkpoint id parts): not for staged data."""
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def read_head(client: Any, bucket: str, key: str, n: int) -> bytes:
    """The first `n` bytes of a non-empty object (S3 answers a range of an empty one 416)."""
    return client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{n - 1}")["Body"].read()


def head(client: Any, bucket: str, key: str) -> dict:
    """The object's metadata (ETag, ContentLength, LastModified); raises if it is missing."""
    return client.head_object(Bucket=bucket, Key=key)


def put_json(client: Any, bucket: str, key: str, doc: Any) -> None:
    put_bytes(client, bucket, key,
              orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE),
              content_type="application/json")


def get_json(client: Any, bucket: str, key: str) -> Any:
    return orjson.loads(get_bytes(client, bucket, key))


def exists(client: Any, bucket: str, key: str) -> bool:
    try:
        head(client, bucket, key)
        return True
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
