"""deepbet's pre-processing in numpy matches the torch operations of deepbet 1.0.2 that it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dicomnode.inference.deepbet import _normalize, _resize_nearest


@pytest.mark.parametrize(("shape", "size"), [((233, 197, 189), (128, 128, 128)), ((150, 171, 160), (256, 256, 256)),
                                             ((256, 256, 256), (151, 171, 161)), ((7, 300, 5), (3, 128, 64))])
def test_resize_is_torch_nearest_exact(shape: tuple[int, ...], size: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x)[None, None], size, mode="nearest-exact")[0, 0].numpy()
    assert np.array_equal(_resize_nearest(x, size), expected)


def test_normalize_is_deepbets() -> None:
    x = np.random.default_rng(1).gamma(2.0, 100.0, size=(64, 64, 64)).astype(np.float32)
    low, high = np.quantile(x, (0.005, 0.995))
    t = ((torch.from_numpy(x) - float(low)) / float(high - low)).clamp(min=0, max=1)
    expected = (0.226 * (t - t.mean()) / t.std() + 0.449).numpy()
    result = _normalize(x, float(low), float(high))
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)
