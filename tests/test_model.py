"""devstack.model: which embedder a SageMaker container selects, and the real MiniLM embedder
(offline weights, 384-d, normalised, same vectors as sentence-transformers, thread-safe)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from devstack import model


class _Fake:
    name, dimension = "fake", 3

    def embed(self, texts):
        return np.ones((len(texts), 3), dtype=np.float32)


@pytest.mark.parametrize("container", [
    None,
    {},
    {"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:2.1",
     "Environment": {"HF_MODEL_ID": "sentence-transformers/all-MiniLM-L6-v2"}},
    {"Image": "my-registry/minilm-embedder:latest"},
    {"Image": "some/other-model", "Environment": {"HF_MODEL_ID": "BAAI/bge-small-en"}},
])
def test_containers_default_to_minilm(container):
    embedder = model.get_embedder(container)
    assert isinstance(embedder, model.MiniLM)
    assert embedder is model.get_embedder(None), "aliases share one loaded model"


def test_register_another_model():
    model.register("acme/tiny-embedder", _Fake)
    try:
        container = {"Image": "x", "Environment": {"HF_MODEL_ID": "ACME/tiny-embedder"}}
        embedder = model.get_embedder(container)
        assert embedder.name == "fake" and embedder is model.get_embedder(container)
        assert embedder.embed(["a", "b"]).shape == (2, 3)
        # The longest key a container names wins: a MiniLM id is not captured by "minilm".
        assert model.resolve_key({"Environment": {"HF_MODEL_ID": "all-MiniLM-L6-v2"}}) == \
            "all-minilm-l6-v2"
    finally:
        model.unregister("acme/tiny-embedder")
    assert isinstance(model.get_embedder({"Environment": {"HF_MODEL_ID": "acme/tiny-embedder"}}),
                      model.MiniLM)


@pytest.fixture(scope="module")
def minilm():
    return model.preload(None)


def test_minilm_matches_sentence_transformers(minilm):
    texts = ["a cat napping in the sun", "A small kitten is sleeping on a warm windowsill.",
             "Stock markets fell sharply after the interest rate decision.", "ünïcödé ✓", ""]
    vectors = minilm.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 384) == (5, minilm.dimension)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # sentence-transformers' own encode of the same weights, one text at a time (no padding).
    st = minilm.load()
    for text, vec in zip(texts, vectors, strict=True):
        want = st.encode([text], normalize_embeddings=True)[0]
        assert float(vec @ want) >= 0.9999
    query, kitten, stocks = vectors[:3]
    assert query @ kitten > 0.5 > 0.1 > query @ stocks
    assert minilm.embed([]).shape == (0, 384)


def test_minilm_thread_safe(minilm):
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(40)]
    expected = minilm.embed(texts)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda chunk: minilm.embed(chunk), [texts[i::4] for i in range(4)]))
    for i, got in enumerate(results):
        assert np.allclose(got, expected[i::4], atol=1e-5)
