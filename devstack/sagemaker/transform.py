"""One transform job's data path: find the input objects in S3, split each into records,
filter, pack them into requests, send those to the model (MaxConcurrentTransforms at a time,
answers kept in input order), join, and assemble the `.out` text, as SageMaker batch
transform does.

Output is spooled (memory, then disk) and uploaded only once the whole input file succeeded,
so a `.out` is never partial; input is streamed, so memory stays bounded whatever the size.
"""

from __future__ import annotations

import gzip
import json
import posixpath
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from devstack.sagemaker import dataprocessing as dp
from devstack.sagemaker.dataprocessing import FilterError

# Records handed to the in-process model in one call, at most: bounds the time between two
# checks for a stop request. Containers get what MaxPayloadInMB holds, as on SageMaker.
MAX_RECORDS_PER_CALL = 256
SPOOL_IN_MEMORY = 32 << 20


class StopRequested(Exception):
    """StopTransformJob was called: end the job as Stopped."""


class Shutdown(Exception):
    """The service is going down: leave the job InProgress, it resumes at the next start."""


class FileFailed(Exception):
    """The model refused or failed a request of this file: no .out for it; the job goes on
    with its other files and ends Failed with this reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ModelFailed(Exception):
    """Raised by a predict function: `reason` starts with the error class (ClientError, ...)
    and names the lines; the transformer adds the file."""

    def __init__(self, kind: str, message: str, fatal: bool = False):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.fatal = kind, message, fatal


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
class Record:
    line: int
    source: object  # the parsed input record (what JoinSource=Input joins)
    value: object  # what the InputFilter selected (the text itself in text/plain mode)
    payload: bytes  # what goes over the wire for it

    @property
    def size(self) -> int:
        return len(self.payload)


def embedder_predict(embed: Callable[[list[str]], object]) -> Callable[[list[Record]], list]:
    """A predict function over an in-process embedder (the devstack's cheap path): a record
    is a string, a list of strings or {"inputs": ...}; its answer is its list of vectors."""
    def predict(batch: list[Record]) -> list:
        texts, spans = [], []
        for rec in batch:
            try:
                got = [rec.value] if isinstance(rec.value, str) else dp.texts_of(rec.value)
            except FilterError as exc:
                raise FilterError(f"line {rec.line}: {exc}") from None
            spans.append((len(texts), len(texts) + len(got)))
            texts.extend(got)
        vectors = embed(texts)
        return [vectors[a:b] for a, b in spans]

    return predict


@dataclass
class FileTransformer:
    """Transforms one input object into the text of its `.out`."""

    s3: object
    predict: Callable[[list[Record]], list]  # one answer per record, in order
    settings: Settings
    check: Callable[[], None]  # raises StopRequested / Shutdown between model calls
    progress: Callable[[int], None]
    tmp_dir: Path
    concurrency: int = 1  # MaxConcurrentTransforms: requests in flight at once
    max_records: int | None = MAX_RECORDS_PER_CALL
    _where: str = field(default="", init=False)

    def run(self, src: InputFile):
        """(spooled output file positioned at 0, record count)."""
        self._where = src.uri
        out = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=self.tmp_dir)
        count = 0
        body = self.s3.get_object(Bucket=src.bucket, Key=src.key)["Body"]
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="invoke")
        pending: deque = deque()
        try:
            for batch in self._batches(body):
                self.check()
                pending.append((batch, pool.submit(self.predict, batch)))
                if len(pending) >= self.concurrency:  # the oldest first: output stays in order
                    count += self._write(*pending.popleft(), out)
            while pending:
                count += self._write(*pending.popleft(), out)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # in-flight calls end by their timeout
            out.close()
            raise
        finally:
            pool.shutdown(wait=True)
            body.close()
        out.seek(0)
        return out, count

    def _batches(self, body) -> Iterator[list[Record]]:
        """SingleRecord: one record per request; MultiRecord: as many as fit in MaxPayloadInMB
        (records joined by newlines); a mini-batch never spans two files."""
        batch, batch_bytes = [], 0
        limit = 1 if self.settings.single_record else self.max_records
        for line_no, raw in self._raw_records(body):
            rec = self._prepare(line_no, raw)
            if batch and ((limit and len(batch) >= limit)
                          or self._over(batch_bytes + rec.size + 1)):
                yield batch
                batch, batch_bytes = [], 0
            batch.append(rec)
            batch_bytes += rec.size + 1
        if batch:
            yield batch

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

    def _prepare(self, line: int, raw: bytes) -> Record:
        s = self.settings
        if s.text_plain and s.in_filter is None and not s.join_input and s.out_filter is None:
            rec = Record(line, None, raw.decode("utf-8", "replace"), raw)
        else:
            try:
                source = dp.loads(raw)
                model_input = dp.apply(s.in_filter, source)
            except FilterError as exc:
                raise self._fail(line, str(exc)) from None
            rec = Record(line, source, model_input,
                         raw if s.in_filter is None else dp.dumps(model_input))
        if self._over(rec.size):
            raise FileFailed(f"ClientError: {self._where}, line {line}: Too much data for max "
                             f"payload size ({rec.size} bytes > MaxPayloadInMB "
                             f"{s.max_payload >> 20})")
        return rec

    def _write(self, batch: list[Record], future, out) -> int:
        try:
            answers = future.result()
        except FilterError as exc:
            raise FilterError(f"{self._where}, {exc}") from None
        except ModelFailed as exc:
            if exc.fatal:
                raise ModelFailed(exc.kind, f"{self._where}: {exc.message}", fatal=True) from None
            raise FileFailed(f"{exc.kind}: {self._where}: {exc.message}") from None
        s = self.settings
        for rec, answer in zip(batch, answers, strict=True):
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
