"""The fast float16 <-> float32 conversion gives numpy's bits exactly."""

import numpy as np

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
