"""One transform job's data path: find the input objects in S3, split each into records,
filter, batch, embed, join, and assemble the `.out` text, as SageMaker batch transform does.

Output is spooled (memory, then disk) and uploaded only once the whole input file succeeded,
so a `.out` is never partial; input is streamed, so memory stays bounded whatever the size.
"""

from __future__ import annotations

import gzip
import json
import posixpath
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devstack.sagemaker import dataprocessing as dp
from devstack.sagemaker.dataprocessing import FilterError

# Records handed to the model in one call, at most: bounds the time between two checks for a
# stop request (and between progress lines) however large MaxPayloadInMB is.
MAX_RECORDS_PER_CALL = 256
SPOOL_IN_MEMORY = 32 << 20


class StopRequested(Exception):
    """StopTransformJob was called: end the job as Stopped."""


class Shutdown(Exception):
    """The service is going down: leave the job InProgress, it resumes at the next start."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise FilterError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


@dataclass(frozen=True)
class Settings:
    split_lines: bool
    gzip: bool
    text_plain: bool
    in_filter: tuple | None
    out_filter: tuple | None
    join_input: bool
    assemble_lines: bool
    max_payload: int  # bytes; 0 = no limit
    single_record: bool

    @classmethod
    def of(cls, request: dict) -> Settings:
        t_in, proc = request["TransformInput"], request.get("DataProcessing") or {}
        return cls(
            split_lines=t_in.get("SplitType") == "Line",
            gzip=t_in.get("CompressionType") == "Gzip",
            text_plain=str(t_in.get("ContentType") or "").startswith("text/plain"),
            in_filter=dp.parse(proc.get("InputFilter")),
            out_filter=dp.parse(proc.get("OutputFilter")),
            join_input=proc.get("JoinSource") == "Input",
            assemble_lines=request["TransformOutput"].get("AssembleWith") == "Line",
            max_payload=int(request.get("MaxPayloadInMB", 6)) << 20,
            single_record=request.get("BatchStrategy") == "SingleRecord",
        )


@dataclass(frozen=True)
class InputFile:
    bucket: str
    key: str
    rel: str  # path relative to the input prefix: names the .out

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def list_inputs(s3, request: dict) -> list[InputFile]:
    source = request["TransformInput"]["DataSource"]["S3DataSource"]
    if source["S3DataType"] == "ManifestFile":
        return _manifest_inputs(s3, source["S3Uri"])
    bucket, prefix = parse_s3_uri(source["S3Uri"])
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):  # "folder" markers hold no records
                continue
            rel = key[len(prefix):].lstrip("/") or posixpath.basename(key)
            found.append(InputFile(bucket, key, rel))
    return sorted(found, key=lambda f: f.key)


def _manifest_inputs(s3, uri: str) -> list[InputFile]:
    bucket, key = parse_s3_uri(uri)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        entries = json.loads(body)
        prefix_uri = entries[0]["prefix"]
        rels = entries[1:]
        if not all(isinstance(r, str) for r in rels):
            raise ValueError("entries after the prefix must be strings")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise FilterError(f"cannot read the manifest {uri}: expected "
                          f'[{{"prefix": "s3://bucket/prefix/"}}, "relative/key", ...] ({exc})') from None
    p_bucket, p_key = parse_s3_uri(prefix_uri)
    return [InputFile(p_bucket, p_key + rel, rel) for rel in rels]


def output_location(request: dict, rel: str) -> tuple[str, str]:
    bucket, prefix = parse_s3_uri(request["TransformOutput"]["S3OutputPath"])
    prefix = prefix.rstrip("/")
    return bucket, (f"{prefix}/{rel}" if prefix else rel) + ".out"


@dataclass
class _Record:
    line: int
    source: object  # the parsed input record (what JoinSource=Input joins)
    texts: list[str]
    size: int


@dataclass
class FileTransformer:
    """Transforms one input object into the text of its `.out`."""

    s3: object
    embed: Callable[[list[str]], object]
    settings: Settings
    check: Callable[[], None]  # raises StopRequested / Shutdown between model calls
    progress: Callable[[int], None]
    tmp_dir: Path
    _where: str = field(default="", init=False)

    def run(self, src: InputFile):
        """(spooled output file positioned at 0, record count)."""
        self._where = src.uri
        out = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=self.tmp_dir)
        count, batch, batch_bytes = 0, [], 0
        body = self.s3.get_object(Bucket=src.bucket, Key=src.key)["Body"]
        try:
            for line_no, raw in self._raw_records(body):
                rec = self._prepare(line_no, raw)
                limit = 1 if self.settings.single_record else MAX_RECORDS_PER_CALL
                if batch and (len(batch) >= limit or self._over(batch_bytes + rec.size + 1)):
                    count += self._flush(batch, out)
                    batch, batch_bytes = [], 0
                batch.append(rec)
                batch_bytes += rec.size + 1
            if batch:
                count += self._flush(batch, out)
        except BaseException:
            out.close()
            raise
        finally:
            body.close()
        out.seek(0)
        return out, count

    def _over(self, size: int) -> bool:
        return bool(self.settings.max_payload) and size > self.settings.max_payload

    def _raw_records(self, body) -> Iterator[tuple[int, bytes]]:
        stream = gzip.GzipFile(fileobj=body) if self.settings.gzip else body
        if not self.settings.split_lines:
            data = stream.read()
            if data.strip():
                yield 1, data
            return
        lines = iter(stream) if self.settings.gzip else body.iter_lines(chunk_size=1 << 20)
        for n, line in enumerate(lines, 1):
            line = line.rstrip(b"\r\n")
            if line.strip():  # blank lines are not records
                yield n, line

    def _fail(self, line: int, message: str) -> FilterError:
        return FilterError(f"{self._where}, line {line}: {message}")

    def _prepare(self, line: int, raw: bytes) -> _Record:
        s = self.settings
        if self._over(len(raw)):
            raise self._fail(line, f"Too much data for max payload size ({len(raw)} bytes > "
                                   f"MaxPayloadInMB {s.max_payload >> 20})")
        if s.text_plain and s.in_filter is None and not s.join_input and s.out_filter is None:
            return _Record(line, None, [raw.decode("utf-8", "replace")], len(raw))
        try:
            source = dp.loads(raw)
            model_input = dp.apply(s.in_filter, source)
            texts = dp.texts_of(model_input)
        except FilterError as exc:
            raise self._fail(line, str(exc)) from None
        size = len(raw) if s.in_filter is None else sum(len(t.encode()) + 3 for t in texts)
        return _Record(line, source, texts, size)

    def _flush(self, batch: list[_Record], out) -> int:
        self.check()
        texts = [t for rec in batch for t in rec.texts]
        vectors = self.embed(texts)
        s, pos = self.settings, 0
        for rec in batch:
            answer = vectors[pos:pos + len(rec.texts)]
            pos += len(rec.texts)
            value = dp.join(rec.source, answer) if s.join_input else answer
            try:
                value = dp.apply(s.out_filter, value)
            except FilterError as exc:
                raise self._fail(rec.line, f"OutputFilter: {exc}") from None
            out.write(dp.dumps(value))
            if s.assemble_lines:
                out.write(b"\n")
        self.progress(len(batch))
        return len(batch)
