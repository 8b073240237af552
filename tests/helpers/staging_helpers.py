"""Sample inputs shared by the staging tests with S3 (tests/integration/test_staging.py) and
without (tests/unit/ingest/test_staging.py)."""

from __future__ import annotations

import orjson

from batchvec.ingest.records import RecordSpec
from batchvec.ingest.sources import open_input

SPEC = RecordSpec("id", "text", ("lang",))


def jsonl(rows: list) -> bytes:
    return b"".join(r if isinstance(r, bytes) else orjson.dumps(r) + b"\n" for r in rows)


GOOD = [{"id": f"d{i}", "text": f"text number {i}", "lang": "en"} for i in range(50)]

MIXED = [
    b'\xef\xbb\xbf{"id": "bom", "text": "first line with a BOM"}\r\n',
    b"\n",
    b"   \r\n",
    b'{"id": 1, "text": "crlf line"}\r\n',
    b"{not json}\n",
    b"[1, 2]\n",
    b'{"id": "x", "text": "\xff\xfe"}\n',
    b'{"text": "no id"}\n',
    b'{"id": true, "text": "bool id"}\n',
    b'{"id": "y"}\n',
    b'{"id": "z", "text": "   "}\n',
    b'{"id": "w", "text": 5}\n',
    b'{"id": "last", "text": "no newline at end"}',
]

MIXED_REASONS = {"invalid_json": 1, "not_an_object": 1, "invalid_utf8": 1, "missing_id": 1,
                 "bad_id_type": 1, "missing_text": 1, "empty_text": 1, "bad_text_type": 1}


def items(uri: str, client=None, fmt: str = "auto") -> list:
    return list(open_input(uri, fmt=fmt, s3_client=client, spec=SPEC))
