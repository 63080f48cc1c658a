"""Synthetic Digit-Five domains: shapes, ranges, determinism, caching."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.synth_digits import DOMAINS, cache_path, cached_digit5_synth, make_digit5_synth


@pytest.mark.parametrize("domain", DOMAINS)
def test_shapes_ranges_classes(domain):
    x, y = make_digit5_synth(domain, 3, seed=0)
    assert x.shape == (30, 3, 32, 32) and x.dtype == np.float32
    assert y.shape == (30,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
    assert np.bincount(y, minlength=10).tolist() == [3] * 10


@pytest.mark.parametrize("domain", DOMAINS)
def test_deterministic_from_seed(domain):
    x1, y1 = make_digit5_synth(domain, 2, seed=7)
    x2, y2 = make_digit5_synth(domain, 2, seed=7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = make_digit5_synth(domain, 2, seed=8)
    assert not np.array_equal(x1, x3)


def test_domains_differ():
    means = [make_digit5_synth(d, 2, seed=0)[0].mean() for d in DOMAINS]
    assert len({round(float(m), 4) for m in means}) == len(DOMAINS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="domain"):
        make_digit5_synth("emnist", 1, 0)
    with pytest.raises(ValueError, match="n_per_class"):
        make_digit5_synth("mnist", 0, 0)


def test_cache_roundtrip(tmp_path, monkeypatch):
    x, y = cached_digit5_synth("syn", 2, seed=3, cache_dir=tmp_path)
    path = cache_path("syn", 2, 3, tmp_path)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]

    def fail(*args):
        raise AssertionError("regenerated despite the cache")

    monkeypatch.setattr("fedsim.synth_digits.make_digit5_synth", fail)
    x2, y2 = cached_digit5_synth("syn", 2, seed=3, cache_dir=tmp_path)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_corrupt_cache_is_regenerated(tmp_path):
    path = cache_path("usps", 1, 0, tmp_path)
    path.write_bytes(b"not a zip file")
    x, y = cached_digit5_synth("usps", 1, seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(x, make_digit5_synth("usps", 1, 0)[0])
    with np.load(path, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["y"], y)
