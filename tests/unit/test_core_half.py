"""The fast float16 <-> float32 conversion gives numpy's bits exactly."""

import numpy as np
import pytest

from actors.core._half import to_f16, to_f32


def test_every_float16_widens_exactly():
    h = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)
    got, want = to_f32(h), h.astype(np.float32)
    assert got.shape == (256, 256) and got.dtype == np.float32
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(got.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])


def test_narrowing_rounds_like_numpy_across_ranges_and_layouts():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_001) * 10.0 ** rng.integers(-9, 5, 200_001)).astype(np.float32)
    with np.errstate(over="ignore"):
        assert np.array_equal(to_f16(x).view(np.uint16), x.astype(np.float16).view(np.uint16))
    strided = x[:3000].reshape(30, 100)[:, ::3]
    assert np.array_equal(to_f16(strided), strided.astype(np.float16))
    assert to_f16(np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_single_threaded_torch_converts_in_one_call_with_the_same_bits():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((300, 384)) * 10.0 ** rng.integers(-6, 3, (300, 1))).astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        h = to_f16(x)
        assert np.array_equal(h.view(np.uint16), x.astype(np.float16).view(np.uint16))
        assert np.array_equal(to_f32(h).view(np.uint32), h.astype(np.float32).view(np.uint32))
    finally:
        torch.set_num_threads(threads)
