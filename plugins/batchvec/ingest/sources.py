"""Stream input records from local files or S3 (JSONL, gzip'd JSONL, Parquet, CSV).

An input is iterated as ``(source, line, payload)`` tuples (plain tuples: millions a minute
go through here): ``payload`` is the raw line ``bytes`` for JSONL, a ``dict`` row for
Parquet/CSV, or a ``Rejected`` for what cannot be read (a truncated gzip, a Parquet file
without the text column: one item whose ``count`` is that file's row count). Memory stays
bounded whatever the size: objects are read in chunks from one GET, gzip is inflated
incrementally with a cap on each step's output, Parquet is read batch by batch (one row
group's needed columns at a time), and a "line" longer than ``MAX_LINE_BYTES`` is skipped.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchvec.hooks.s3io import DEFAULT_CHUNK_SIZE, S3RangeFile, iter_object_chunks, list_objects
from batchvec.ingest.csv_types import infer_type, typed_values
from batchvec.ingest.records import RecordSpec, Rejected, raw_excerpt
from batchvec.plan.naming import parse_s3_uri

__all__ = ["FORMATS", "InputError", "InputSet", "Item", "SourceFile", "detect_format", "open_input"]

FORMATS = ("auto", "jsonl", "jsonl.gz", "parquet", "csv")
MAX_LINE_BYTES = 16 << 20  # no staged record can come from a longer line (cap: 5 MiB)
_INFLATE_STEP = 4 << 20  # most bytes one inflate step may produce: a gzip bomb stays bounded
_PARQUET_BATCH = 8192
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
               ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}

Item = tuple[str, int, "bytes | dict | Rejected"]


class InputError(ValueError):
    """The input as a whole cannot be read (nothing there, unknown format, bad URI)."""


class _Broken(Exception):
    """Raised by a chunk stream that cannot go on; becomes one file-level rejection."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class SourceFile:
    name: str  # s3://bucket/key or a local path: what rejections and the manifest show
    size: int
    format: str  # jsonl | parquet | csv
    gzip: bool


def detect_format(name: str, fmt: str = "auto") -> tuple[str, bool]:
    """``(format, gzip)`` for a file name: an explicit format wins, ``.gz`` means gzip."""
    if fmt not in FORMATS:
        raise InputError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    lower = name.lower()
    gz = lower.endswith(".gz") or fmt == "jsonl.gz"
    if fmt == "jsonl.gz":
        return "jsonl", True
    if fmt != "auto":
        return fmt, gz
    base = lower[:-3] if lower.endswith(".gz") else lower
    found = _EXTENSIONS.get(Path(base).suffix)
    if found is None:
        raise InputError(f"cannot tell the format of {name} from its extension; pass a format")
    if found == "parquet" and gz:
        raise InputError(f"{name}: gzip'd Parquet is not supported (Parquet compresses itself)")
    return found, gz


def _hidden(relative: str) -> bool:
    # _SUCCESS, .crc, _temporary/ and other writer metadata (Spark, Hadoop) are not data.
    return relative.endswith("/") or any(p.startswith(("_", ".")) for p in relative.split("/"))


class InputSet:
    """The files behind one input URI, resolved up front; iterating yields their items.

    ``bytes_read`` counts stored (possibly compressed) bytes consumed so far, for progress.
    """

    def __init__(
        self,
        uri: str,
        *,
        fmt: str = "auto",
        s3_client: Any = None,
        spec: RecordSpec | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        files: Iterable[SourceFile] | None = None,
    ) -> None:
        """``files``: these, already listed (a staging group's share), instead of listing."""
        self.uri, self.fmt, self.client = uri, fmt, s3_client
        self.spec = spec or RecordSpec()
        self.chunk_size = chunk_size
        self.bytes_read = 0
        self.files = self._resolve() if files is None else list(files)

    def _resolve(self) -> list[SourceFile]:
        if self.uri.startswith("s3://"):
            try:
                bucket, key = parse_s3_uri(self.uri)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            if self.client is None:
                raise InputError(f"{self.uri}: an S3 client is needed to read S3 input")
            found = _select_s3(key, list_objects(self.client, bucket, key))
            listed = f"s3://{bucket}/{key}"
            named = [(f"s3://{bucket}/{k}", size) for k, size in found]
        else:
            root = Path(self.uri)
            if root.is_file():
                named = [(str(root), root.stat().st_size)]
            elif root.is_dir():
                named = [(str(p), p.stat().st_size) for p in sorted(root.rglob("*"))
                         if p.is_file() and not _hidden(p.relative_to(root).as_posix())]
            else:
                raise InputError(f"input path {self.uri} does not exist")
            listed = str(root)
        if not named:
            raise InputError(f"no input objects under {listed}")
        return [SourceFile(n, size, *detect_format(n, self.fmt)) for n, size in named]

    def __iter__(self) -> Iterator[Item]:
        for f in self.files:
            if f.format == "parquet":
                yield from self._parquet(f)
            elif f.format == "csv":
                yield from self._csv(f)
            else:
                yield from _split_lines(f.name, self._decoded(f))

    def _chunks(self, f: SourceFile) -> Iterator[bytes]:
        if f.name.startswith("s3://"):
            bucket, key = parse_s3_uri(f.name)
            chunks: Iterable[bytes] = iter_object_chunks(self.client, bucket, key, self.chunk_size)
        else:
            chunks = _local_chunks(f.name, self.chunk_size)
        for chunk in chunks:
            self.bytes_read += len(chunk)
            yield chunk

    def _decoded(self, f: SourceFile) -> Iterator[bytes]:
        return _gunzip(self._chunks(f)) if f.gzip else self._chunks(f)

    def _open_random_access(self, f: SourceFile) -> Any:
        if f.name.startswith("s3://"):
            bucket, key = parse_s3_uri(f.name)
            return S3RangeFile(self.client, bucket, key, size=f.size)
        return open(f.name, "rb")  # closed by the caller's with-block

    def _needed_columns(self, names: list[str]) -> tuple[list[str], list[str]]:
        """(columns to read, required columns that are missing)."""
        spec = self.spec
        missing = [c for c in (spec.id_field, spec.text_field) if c not in names]
        wanted = [spec.id_field, spec.text_field, *spec.metadata_fields]
        return [c for c in dict.fromkeys(wanted) if c in names], missing

    def _parquet(self, f: SourceFile) -> Iterator[Item]:
        import pyarrow.parquet as pq

        with self._open_random_access(f) as fh:
            try:
                pf = pq.ParquetFile(fh)
            except Exception as exc:  # not Parquet at all: its rows cannot be counted
                self.bytes_read += f.size
                yield f.name, 0, Rejected("unreadable_file", f"not a Parquet file: {exc}"[:300])
                return
            total = pf.metadata.num_rows
            names = pf.schema_arrow.names
            columns, missing = self._needed_columns(names)
            if missing:
                self.bytes_read += f.size
                yield f.name, 0, _missing_column(missing, names, total)
                return
            row, base = 0, self.bytes_read
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=columns):
                # progress in proportion to rows: Parquet is read by column chunk, not in order
                self.bytes_read = base + f.size * (row + batch.num_rows) // max(total, 1)
                cols = [c.to_pylist() for c in batch.columns]
                for values in zip(*cols, strict=True):
                    row += 1
                    yield f.name, row, dict(zip(columns, values, strict=True))
            self.bytes_read = base + f.size

    def _csv(self, f: SourceFile) -> Iterator[Item]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        # Every column as binary: ids keep leading zeros, and bad UTF-8 is rejected per row
        # instead of failing the whole block.
        stream = _ChunkStream(self._decoded(f))
        row = 0
        try:
            reader = pcsv.open_csv(
                stream,
                read_options=pcsv.ReadOptions(block_size=1 << 20),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(default_column_type=pa.binary()),
            )
            names = reader.schema.names
            columns, missing = self._needed_columns(names)
            index = [names.index(c) for c in columns]
            meta = set(self.spec.metadata_fields)
            types: list | None = None  # per column, inferred from the file's first batch
            for batch in reader:
                if missing:
                    row += batch.num_rows
                    continue
                raw = [batch.column(i) for i in index]
                if types is None:
                    types = [infer_type(col) if c in meta else None
                             for c, col in zip(columns, raw, strict=True)]
                cols = [typed_values(col, t) for col, t in zip(raw, types, strict=True)]
                for values in zip(*cols, strict=True):
                    row += 1
                    yield f.name, row, _decode_row(columns, values)
        except _Broken as exc:
            yield f.name, row + 1, Rejected(exc.reason, exc.detail)
            return
        except (pa.ArrowInvalid, OSError) as exc:
            if isinstance(exc.__context__, _Broken):
                broken = exc.__context__
                yield f.name, row + 1, Rejected(broken.reason, broken.detail)
            elif "Empty CSV file" not in str(exc):
                yield f.name, row + 1, Rejected("invalid_csv", str(exc)[:300])
            return
        if missing:
            yield f.name, 0, _missing_column(missing, names, row)


def _missing_column(missing: list[str], names: list[str], rows: int) -> Rejected:
    """One rejection for a whole file (line 0) without the id or text column; the excerpt
    lists the columns it has, so a misnamed field (``body`` for ``text``) shows at once."""
    detail = (f"no column {', '.join(map(repr, missing))} (set id_field / text_field?); "
              f"all {rows} rows rejected")
    return Rejected("missing_column", detail, raw="columns: " + ", ".join(names), count=rows)


def _decode_row(columns: list[str], values: tuple) -> dict | Rejected:
    try:
        return {c: v.decode() if v.__class__ is bytes else v
                for c, v in zip(columns, values, strict=True) if v is not None}
    except UnicodeDecodeError as exc:
        raw = b",".join(v or b"" for v in values)
        return Rejected("invalid_utf8", f"a field is not UTF-8 at byte {exc.start}",
                        raw=raw_excerpt(raw))


def _select_s3(key: str, objects: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """An exact object wins; else the "directory" ``key/``; else everything under ``key``."""
    if key and not key.endswith("/"):
        exact = [o for o in objects if o[0] == key]
        if exact:
            return exact
        under_dir = [o for o in objects if o[0].startswith(key + "/")]
        objects = under_dir or objects
    base = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    return [o for o in objects if not _hidden(o[0][len(base):])]


def _local_chunks(path: str, chunk_size: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk


def _gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Inflate a (possibly multi-member) gzip stream chunk by chunk; raise _Broken if cut."""
    d = zlib.decompressobj(31)
    fed = False  # has the current member's decompressor been given any input?
    try:
        for chunk in chunks:
            data = chunk
            while True:
                fed = fed or bool(data)
                out = d.decompress(data, _INFLATE_STEP)
                if out:
                    yield out
                if d.eof:  # member done; concatenated gzip (pigz, appends) may have more
                    data = d.unused_data.lstrip(b"\x00")
                    d, fed = zlib.decompressobj(31), False
                    if not data:
                        break
                    continue
                data = d.unconsumed_tail
                # A full step may leave output pending inside zlib: go round again to drain.
                if not data and len(out) < _INFLATE_STEP:
                    break
        if fed and not d.eof:
            raise _Broken("truncated_gzip", "gzip stream ends before its end marker")
    except zlib.error as exc:
        raise _Broken("corrupt_gzip", f"gzip data is corrupt: {exc}") from None


def _split_lines(source: str, pieces: Iterable[bytes]) -> Iterator[Item]:
    """Cut a byte stream into lines (numbered from 1, blank ones included)."""
    carry = b""
    n = 0
    skipping = False  # inside a line longer than MAX_LINE_BYTES
    try:
        for piece in pieces:
            if skipping:
                cut = piece.find(b"\n")
                if cut < 0:
                    continue
                piece, skipping = piece[cut + 1:], False
            elif carry:
                piece = carry + piece
            lines = piece.split(b"\n")
            carry = lines.pop()
            first = n + 1
            for n, line in enumerate(lines, first):  # n keeps the last number for later
                yield source, n, line
            if len(carry) > MAX_LINE_BYTES:
                n += 1
                yield source, n, Rejected(
                    "line_too_long", f"line over {MAX_LINE_BYTES} bytes", raw=raw_excerpt(carry))
                carry, skipping = b"", True
    except _Broken as exc:  # what followed the cut is unknown: one rejection stands for it
        detail = f"{exc.detail}: lines 1-{n} were read, anything after them is lost"
        yield source, n + 1, Rejected(exc.reason, detail, raw=raw_excerpt(carry))
        return
    if carry:
        yield source, n + 1, carry


class _ChunkStream:
    """A read-only file over an iterator of byte chunks (for pyarrow's streaming CSV reader)."""

    closed = False

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            rest = [self._buf[self._pos:], *self._chunks]
            self._buf, self._pos = b"", 0
            return b"".join(rest)
        while len(self._buf) - self._pos < n:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buf = self._buf[self._pos:] + nxt
            self._pos = 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def close(self) -> None:
        self.closed = True


def open_input(
    uri: str,
    *,
    fmt: str = "auto",
    s3_client: Any = None,
    spec: RecordSpec | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> InputSet:
    """Resolve ``uri`` (local file/dir, ``s3://bucket/object`` or ``s3://bucket/prefix``)."""
    return InputSet(uri, fmt=fmt, s3_client=s3_client, spec=spec, chunk_size=chunk_size)
