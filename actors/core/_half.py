"""Fast, exact float16 <-> float32 conversion of numpy arrays.

numpy's ``astype`` between float16 and float32 runs a scalar loop on many builds
(about 2 ns per value here, which would dominate a profile update). torch's CPU copy
kernel uses F16C and gives the same bits (round to nearest even). When torch may use
several threads it is fed pieces of at most ``_GRAIN`` values, torch's parallel grain
size, so that it never starts its intra-op thread pool (on a busy 2-core box that made it
20x slower); single-threaded it converts in one call (each piece costs ~4 us). It writes
into numpy-allocated buffers (torch's allocator page-faults on fresh large blocks).
torch is imported on first use, so importing :mod:`actors.core` stays cheap.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_f32", "to_f16"]

_GRAIN = 32768
_SMALL = 4096
_torch = None


def to_f32(a: np.ndarray) -> np.ndarray:
    """float16 array -> new float32 array of the same shape (exact)."""
    return _convert(a, np.float32)


def to_f16(a: np.ndarray) -> np.ndarray:
    """float32 array -> new float16 array of the same shape, rounded like ``astype``."""
    return _convert(np.asarray(a, dtype=np.float32), np.float16)


def _convert(a: np.ndarray, dtype) -> np.ndarray:
    global _torch
    if a.size <= _SMALL:
        return a.astype(dtype)  # below ~4k values numpy's loop beats torch's call overhead
    out = np.empty(a.shape, dtype=dtype)
    if _torch is None:
        import torch

        _torch = torch
    src = _torch.from_numpy(np.array(a, order="C", copy=not (a.flags.c_contiguous and a.flags.writeable))
                            .reshape(-1))
    dst = _torch.from_numpy(out.reshape(-1))
    if _torch.get_num_threads() == 1:
        dst.copy_(src)  # no thread pool to start: one call (pieces cost ~4 us each)
    else:
        for lo in range(0, a.size, _GRAIN):
            dst[lo:lo + _GRAIN].copy_(src[lo:lo + _GRAIN])
    return out
