"""devstack.model: which embedder a SageMaker container selects, the real MiniLM embedder
(offline weights, 384-d, normalised, same vectors as sentence-transformers, thread-safe) and
the hash embedder (deterministic, unit norm, never NaN)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from devstack import model
from tests.helpers.paths import REPO


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


# --- HashEmbedder -----------------------------------------------------------------------------

TEXTS = ["a cat napping in the sun", "Stock markets fell sharply.", "ünïcödé ✓ naïve café",
         "the the the", "one two three four five six seven eight nine ten " * 20]


@pytest.mark.parametrize("dimension", [256, 384])
def test_hash_embedder_selected_by_hf_model_id(dimension):
    key = f"batchvec/hash-embedder-{dimension}"
    container = {"Image": "devstack/in-process-embedder", "Environment": {"HF_MODEL_ID": key}}
    embedder = model.get_embedder(container)
    assert isinstance(embedder, model.HashEmbedder)
    assert embedder.name == key and embedder.dimension == dimension
    assert embedder is model.get_embedder(container)
    assert model.DEFAULT_KEY == "sentence-transformers/all-minilm-l6-v2"
    assert isinstance(model.get_embedder(None), model.MiniLM)


def test_hash_embedder_unit_norm_and_dimension():
    for dimension in (256, 384, 7):
        vectors = model.HashEmbedder(dimension).embed(TEXTS)
        assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), dimension)
        assert vectors.flags.c_contiguous  # orjson serialises only C-contiguous arrays
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert model.HashEmbedder(256).embed([]).shape == (0, 256)


def test_hash_embedder_deterministic_across_instances_and_processes():
    first, second = model.HashEmbedder(256), model.HashEmbedder(256)
    model._token_hashes.clear()  # the second computes every hash afresh
    assert np.array_equal(first.embed(TEXTS), second.embed(TEXTS[::-1])[::-1])
    # Another interpreter with another str hash seed: blake2b, not hash(), picks the buckets.
    code = ("import json, sys; from devstack import model; "
            "print(json.dumps(model.HashEmbedder(256).embed(json.loads(sys.argv[1])).tolist()))")
    include = str(REPO)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": include, "PYTHONHASHSEED": "12345"})
    assert np.array_equal(np.array(json.loads(out.stdout), dtype=np.float32), first.embed(TEXTS))


def test_hash_embedder_texts_differ_unless_their_tokens_match():
    embedder = model.HashEmbedder(256)
    a, b, same, reordered, more = embedder.embed([
        "a cat napping in the sun", "stock markets fell", "A CAT, napping... in the SUN!",
        "sun the in napping cat a", "a cat napping in the sun sun"])
    assert not np.allclose(a, b) and float(a @ b) < 0.5
    assert np.array_equal(a, same) and np.array_equal(a, reordered)
    assert not np.array_equal(a, more)  # counts matter, not just the set of tokens


def test_hash_embedder_text_without_tokens_is_a_fixed_unit_vector():
    embedder = model.HashEmbedder(384)
    vectors = embedder.embed(["", "   ", "?!", "-- ..."])
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert all(np.array_equal(v, vectors[0]) for v in vectors)
    assert np.array_equal(vectors[0], model.HashEmbedder(384).embed([""])[0])


def test_hash_embedder_tokens_that_cancel_out_are_not_nan():
    embedder = model.HashEmbedder(1)  # every token in one bucket: a +1 and a -1 sum to zero
    signs = {}
    for word in (f"w{i}" for i in range(100)):
        signs.setdefault(model._token_hash(word) >> 63, word)
        if len(signs) == 2:
            break
    assert len(signs) == 2
    vectors = embedder.embed([" ".join(signs.values()), ""])
    assert np.isfinite(vectors).all() and np.array_equal(vectors[0], vectors[1])


def test_hash_384_is_not_minilm(minilm):
    texts = TEXTS[:3]
    hashed, real = model.HashEmbedder(384).embed(texts), minilm.embed(texts)
    assert hashed.shape == real.shape
    assert (np.abs((hashed * real).sum(axis=1)) < 0.5).all()
