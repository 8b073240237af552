"""Reading a transform job's output before indexing it: its first line (the model's
dimension, the shape check)."""

from __future__ import annotations

from batchvec.errors import ShardFailed
from batchvec.hooks import s3io
from batchvec.util.lines import iter_lines


def first_output_line(s3, bucket: str, key: str) -> bytes:
    for line in iter_lines(s3io.iter_object_chunks(s3, bucket, key, chunk_size=256 * 1024)):
        return line
    raise ShardFailed(f"output s3://{bucket}/{key} is empty")
