"""Sentence embeddings in the Hugging Face PyTorch inference DLC (batchvec's `code/inference.py`).

The toolkit's default handler cannot serve batch transform for embeddings: MultiRecord
bodies hold several JSON records joined by newlines (its json.loads fails "Extra data"),
`application/jsonlines` has no decoder, and HF_TASK=feature-extraction answers per-token
vectors. This module overrides model_fn / input_fn / predict_fn / output_fn with plain
transformers + torch (what the DLC ships; no sentence-transformers, no network) and pools
exactly as the model's sentence-transformers config says (`modules.json`,
`1_Pooling/config.json`, `sentence_bert_config.json`).

Requests (Content-Type `application/jsonlines` or `application/json`):
- batch transform: one JSON record per line (SingleRecord: one line; MultiRecord: many);
- real-time (InvokeEndpoint, ML Commons `predict`): one JSON document, e.g. `["a", "b"]`
  or `{"inputs": ...}`, possibly pretty-printed over several lines.
A record is a string (answer: its vector), a list of strings (a list of vectors) or
`{"inputs": <string or list>}`. The answer holds one line per record, in order, joined by
newlines without a trailing one, so SageMaker's AssembleWith=Line and JoinSource=Input
line up each answer with its record. Bad input fails the request with a message naming the
record and the reason; the toolkit answers it as HTTP 400.

Environment: BATCHVEC_BATCH_SIZE (texts per forward pass, default 32), and the model
server's SAGEMAKER_MODEL_SERVER_WORKERS / MMS_MAX_RESPONSE_SIZE, which this code reads to
size its CPU threads and to refuse an answer the server would drop.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)
JSONLINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
ANY_ACCEPT = ("", "*/*")
MMS_DEFAULT_MAX_RESPONSE = 6553500  # multi-model-server's default max_response_size
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "lasttoken")  # sentence-transformers' order
MODULE = "sentence_transformers.models."


class BadRequest(ValueError):
    """Input the model cannot take; the toolkit turns it into HTTP 400 with this message."""


# -- parsing (pure: no torch) ----------------------------------------------------------------


@dataclass
class Batch:
    texts: list[str]  # every text of the request, in order
    records: list[tuple[int, bool]]  # per record: how many texts, whether it was one string


def _media_type(value) -> str:
    return str(value or "").split(";", 1)[0].strip().lower()


def _decode(body) -> str:
    if isinstance(body, str):
        return body
    if isinstance(body, bytearray | memoryview):
        body = bytes(body)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 (byte {exc.start}: {exc.reason})") from None


def split_records(text: str, content_type: str) -> list[tuple[int, object]]:
    """(line number, parsed value) per record. `application/json` is one document when it
    parses as one, else one record per line (a MultiRecord body); jsonlines is per line."""
    if _media_type(content_type) in JSON_TYPES:
        try:
            return [(1, json.loads(text))]
        except json.JSONDecodeError as exc:
            if not exc.msg.startswith("Extra data"):
                raise BadRequest(f"record 1 (line 1): not valid JSON: {exc}") from None
    records = []
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue  # blank lines (the trailing newline of a body) are not records
        try:
            records.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise BadRequest(f"record {len(records) + 1} (line {line_no}): not valid JSON: "
                             f"{exc}") from None
    return records


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def texts_of(value, where: str) -> tuple[list[str], bool]:
    """The texts of one record and whether it was a single string."""
    if isinstance(value, dict):
        if "inputs" not in value:
            keys = ", ".join(sorted(value)[:5])
            raise BadRequest(
                f"{where}: a JSON object without \"inputs\" (keys: {keys}); send the text "
                "itself, e.g. with the transform job's DataProcessing InputFilter \"$.text\", "
                "or {\"inputs\": text}")
        value = value["inputs"]
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value, False
    if isinstance(value, list) and not value:
        raise BadRequest(f"{where}: an empty list: nothing to embed")
    if isinstance(value, list):
        bad = next(v for v in value if not isinstance(v, str))
        raise BadRequest(f"{where}: a list holding {_kind(bad)}; expected strings only")
    raise BadRequest(f"{where}: {_kind(value)}; expected a string, a list of strings or "
                     "{\"inputs\": ...}")


def parse(body, content_type: str) -> Batch:
    kind = _media_type(content_type)
    if kind not in JSON_TYPES + JSONLINES_TYPES:
        raise BadRequest(f"Content-Type {content_type!r} is not supported: send "
                         "application/jsonlines (one JSON record per line) or application/json")
    batch = Batch([], [])
    for n, (line_no, value) in enumerate(split_records(_decode(body), kind), 1):
        texts, single = texts_of(value, f"record {n} (line {line_no})")
        batch.texts.extend(texts)
        batch.records.append((len(texts), single))
    if not batch.records:
        raise BadRequest("the request holds no records (an empty body)")
    return batch


def _vector_text(row: np.ndarray) -> str:
    # str() of a float32 is its shortest round-trip spelling: about half the bytes of the
    # float64 repr json.dumps would write, which matters against the response-size limit.
    return "[" + ",".join(map(str, row)) + "]"


def format_answer(vectors: np.ndarray, records: list[tuple[int, bool]],
                  limit: int | None = None) -> str:
    if not np.isfinite(vectors).all():
        raise BadRequest("the model produced non-finite values (NaN or infinity)")
    lines, pos = [], 0
    for count, single in records:
        rows = [_vector_text(vectors[i]) for i in range(pos, pos + count)]
        pos += count
        lines.append(rows[0] if single else "[" + ",".join(rows) + "]")
    answer = "\n".join(lines)
    limit = limit if limit is not None else response_limit()
    if len(answer) > limit:  # ASCII only: characters are bytes
        raise BadRequest(
            f"the answer for {len(records)} records is {len(answer)} bytes, over the model "
            f"server's response limit of {limit} bytes (MMS_MAX_RESPONSE_SIZE): send fewer "
            "records per request (a smaller MaxPayloadInMB) or raise MMS_MAX_RESPONSE_SIZE in "
            "the model's environment")
    return answer


def response_limit() -> int:
    try:
        return int(os.environ.get("MMS_MAX_RESPONSE_SIZE") or MMS_DEFAULT_MAX_RESPONSE)
    except ValueError:
        return MMS_DEFAULT_MAX_RESPONSE


def check_accept(accept) -> None:
    kind = _media_type(accept)
    if kind not in ANY_ACCEPT + JSON_TYPES + JSONLINES_TYPES:
        raise BadRequest(f"Accept {accept!r} is not supported: ask for application/jsonlines "
                         "or application/json")


# -- the model ------------------------------------------------------------------------------


def read_layout(model_dir: str) -> dict:
    """Where the transformer lives, the pooling modes, normalisation and max length, from
    the sentence-transformers files; mean pooling + normalisation for a plain HF model."""
    def load(*parts):
        path = os.path.join(model_dir, *parts)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    modules = load("modules.json")
    if modules is None:
        log.warning("%s has no modules.json: mean pooling and L2 normalisation", model_dir)
        return {"transformer": "", "pooling": ["mean"], "normalize": True, "max_length": None,
                "lowercase": False}
    layout = {"transformer": None, "pooling": None, "normalize": False}
    for module in modules:
        kind = module.get("type", "").removeprefix(MODULE)
        if kind == "Transformer":
            layout["transformer"] = module.get("path", "")
        elif kind == "Pooling":
            cfg = load(module["path"], "config.json") or {}
            layout["pooling"] = _pooling_modes(cfg)
        elif kind == "Normalize":
            layout["normalize"] = True
        else:
            raise RuntimeError(f"modules.json: module {module.get('type')!r} is not supported "
                               "by this inference.py (Transformer, Pooling, Normalize only)")
    if layout["transformer"] is None or not layout["pooling"]:
        raise RuntimeError("modules.json needs a Transformer and a Pooling module")
    bert = load(layout["transformer"], "sentence_bert_config.json") or {}
    layout["max_length"] = bert.get("max_seq_length")
    layout["lowercase"] = bool(bert.get("do_lower_case"))
    return layout


def _pooling_modes(cfg: dict) -> list[str]:
    if isinstance(cfg.get("pooling_mode"), str):  # older configs name one mode
        modes = [cfg["pooling_mode"].replace("mean_sqrt_len_tokens", "mean_sqrt_len")]
    else:
        keys = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                "mean": "pooling_mode_mean_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
                "lasttoken": "pooling_mode_lasttoken", "weightedmean": "pooling_mode_weightedmean_tokens"}
        modes = [mode for mode, key in keys.items() if cfg.get(key)]
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise RuntimeError(f"pooling mode {unknown[0]!r} is not supported by this inference.py")
    return [m for m in POOLING_MODES if m in modes]  # concatenated in sentence-transformers' order


class Embedder:
    def __init__(self, model_dir: str, device: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        layout = read_layout(model_dir)
        path = os.path.join(model_dir, layout["transformer"])
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            torch.set_num_threads(_cpu_threads())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        # fp16 on a GPU: twice the throughput, and pooling below runs in float32 anyway.
        self.model = (model.half() if self.device.startswith("cuda") else model).to(self.device).eval()
        self.pooling, self.normalize = layout["pooling"], layout["normalize"]
        self.lowercase = layout["lowercase"]
        self.max_length = layout["max_length"] or getattr(self.tokenizer, "model_max_length", 512)
        self.batch_size = max(1, int(os.environ.get("BATCHVEC_BATCH_SIZE", "32")))
        log.info("loaded %s on %s: pooling %s, normalize %s, max_length %s, batch %d", path,
                 self.device, "+".join(self.pooling), self.normalize, self.max_length,
                 self.batch_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        # Longest first, as sentence-transformers does: each micro-batch pads to similar
        # lengths, so short texts do not pay for a long neighbour's padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: np.ndarray | None = None
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            vectors = self._forward([self._clean(texts[i]) for i in idx])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors
        return out

    def _clean(self, text: str) -> str:
        text = text.strip()  # sentence-transformers strips each text before tokenising
        return text.lower() if self.lowercase else text

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        enc = self.tokenizer(texts, padding=True, truncation="longest_first",
                             max_length=self.max_length, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            tokens = self.model(**enc)[0].float()
            mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            parts = []
            for mode in self.pooling:
                if mode == "cls":
                    parts.append(tokens[:, 0])
                elif mode == "max":
                    parts.append(tokens.masked_fill(mask == 0, -1e9).max(dim=1).values)
                elif mode in ("mean", "mean_sqrt_len"):
                    total, count = (tokens * mask).sum(1), mask.sum(1).clamp(min=1e-9)
                    parts.append(total / (count if mode == "mean" else count.sqrt()))
                else:  # lasttoken: the last non-padding token, whichever side pads
                    last = enc["attention_mask"].flip(1).argmax(1)
                    last = enc["attention_mask"].shape[1] - 1 - last
                    parts.append(tokens[torch.arange(tokens.shape[0]), last])
            vectors = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.cpu().numpy()


def _cpu_threads() -> int:
    # The model server runs SAGEMAKER_MODEL_SERVER_WORKERS workers (default: one per CPU),
    # each with its own model: split the cores between them instead of oversubscribing.
    cores = os.cpu_count() or 1
    try:
        workers = int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS") or cores)
    except ValueError:
        workers = cores
    return max(1, cores // max(1, workers))


# -- the toolkit's hooks --------------------------------------------------------------------


def model_fn(model_dir, context=None):
    device = None
    gpu = (getattr(context, "system_properties", None) or {}).get("gpu_id")
    if gpu is not None and int(gpu) >= 0:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(gpu)}"
    return Embedder(model_dir, device)


def input_fn(input_data, content_type, context=None):
    return parse(input_data, content_type)


def predict_fn(data, model, context=None):
    return model.encode(data.texts), data.records


def output_fn(prediction, accept, context=None):
    check_accept(accept)
    vectors, records = prediction
    return format_answer(vectors, records)
