"""The packaged MiniLM loads offline and embeds text into unit vectors that separate topics."""

import numpy as np
import pytest
import torch

from actors.encoder import item_text, load_text_encoder, text_fingerprint


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return load_text_encoder()


def test_unit_vectors_and_topic_separation(encoder):
    texts = ["A space opera about starships and galaxies", "Astronauts travel to a distant planet",
             "A romantic comedy about a wedding", "Two lovers meet in Paris and fall in love", ""]  # fmt: skip
    e = encoder.encode(texts, batch_size=2)
    assert e.shape == (5, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]
    assert sim[2, 3] > sim[2, 0] and sim[2, 3] > sim[2, 1]


def test_batching_and_order_do_not_change_vectors(encoder):
    texts = ["short", "a much longer title about many different things", "medium length title"]
    a = encoder.encode(texts, batch_size=1)
    b = encoder.encode(texts, batch_size=3)
    assert np.allclose(a, b, atol=1e-5)


def test_bf16_parity_on_cpu():
    bf16 = load_text_encoder(dtype="bf16")
    fp32 = load_text_encoder(dtype="fp32")
    texts = ["Toy Story (1995)", "Heat (1995) Categories: Action, Crime, Thriller."]
    cos = (bf16.encode(texts) * fp32.encode(texts)).sum(axis=1)
    assert cos.min() > 0.99


def test_item_text_and_fingerprint():
    assert item_text("Heat (1995)", "", ["Action", "Crime"]) == "Heat (1995) Categories: Action, Crime."
    assert item_text("Heat", "Heat. Genres: Action", ["Action"]) == "Heat Categories: Action."
    assert item_text("Heat", "A heist thriller", ["Action"]) == "Heat Categories: Action. A heist thriller"
    assert text_fingerprint("m", ["a", "b"]) != text_fingerprint("m", ["ab"])
