import numpy as np
import pytest
from flwr.app import Array

from fedsim.wire import from_array, pack_client_arrays, split_client_arrays, to_array
from strategies.aggregate import sample_clients, weighted_average


def test_weighted_average_exact_numbers():
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([0.0], dtype=np.float32)}
    b = {"w": np.array([4.0, 8.0], dtype=np.float32), "b": np.array([3.0], dtype=np.float32)}
    out = weighted_average([1, 2], [a, b])
    np.testing.assert_array_equal(out["w"], np.array([3.0, 6.0], dtype=np.float32))
    np.testing.assert_array_equal(out["b"], np.array([2.0], dtype=np.float32))
    assert out["w"].dtype == np.float32


def test_weighted_average_single_update_is_identity():
    a = {"w": np.array([[0.1, -0.7]], dtype=np.float32)}
    np.testing.assert_array_equal(weighted_average([5], [a])["w"], a["w"])


@pytest.mark.parametrize("weights", [[0, 0], [1]])
def test_weighted_average_rejects_bad_weights(weights):
    a = {"w": np.zeros(1)}
    with pytest.raises(ValueError):
        weighted_average(weights, [a, a])


def test_sample_clients_is_seeded_sorted_and_sized():
    first = sample_clients(100, 0.1, np.random.default_rng([3, 1]))
    again = sample_clients(100, 0.1, np.random.default_rng([3, 1]))
    other = sample_clients(100, 0.1, np.random.default_rng([3, 2]))
    assert first == again and first == sorted(first) and len(set(first)) == 10
    assert first != other
    assert sample_clients(20, 0.01, np.random.default_rng(0)) != []  # at least one client
    assert sample_clients(20, 1.0, np.random.default_rng(0)) == list(range(20))


def test_weighted_average_keeps_zero_dim_integer_buffers_as_arrays():
    a = {"num_batches_tracked": np.array(4, dtype=np.int64)}
    b = {"num_batches_tracked": np.array(7, dtype=np.int64)}
    out = weighted_average([1, 2], [a, b])["num_batches_tracked"]
    assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == np.int64 and int(out) == 6


def test_pack_and_split_client_arrays_round_trip():
    states = {7: {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3)},
              2: {"w": -np.ones((2, 3), dtype=np.float32), "n": np.array(5)}}
    record = pack_client_arrays(states)
    assert sorted(record.keys()) == ["n", "w"] and tuple(record["w"].shape) == (2, 2, 3)
    back = split_client_arrays(record, [7, 2])
    assert list(back) == [7, 2]
    for client in states:
        for name in ("w", "n"):
            np.testing.assert_array_equal(back[client][name], states[client][name])
            assert isinstance(back[client][name], np.ndarray)
    assert split_client_arrays(pack_client_arrays({1: {}, 4: {}}), [1, 4]) == {1: {}, 4: {}}
    with pytest.raises(ValueError, match="holds 2 clients, expected 3"):
        split_client_arrays(record, [7, 2, 5])


@pytest.mark.parametrize("value", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.array(2.5), np.arange(3, dtype=np.int64),
    np.zeros((2, 0), dtype=np.float32), np.array([True, False]), np.arange(6.0).reshape(2, 3).T,
])
def test_to_array_and_from_array_are_flowers_format_with_fewer_copies(value):
    """to_array writes the bytes Flower's Array(ndarray) writes (np.save's .npy);
    from_array reads what Array.numpy() reads, as a writable copy or a read-only view."""
    ours, flowers = to_array(value), Array(value)
    assert (ours.dtype, ours.shape, ours.stype) == (flowers.dtype, flowers.shape, flowers.stype)
    if value.flags.c_contiguous:  # np.save writes a transposed array in Fortran order
        assert ours.data == flowers.data
    for array in (ours, flowers):
        for copy in (True, False):
            back = from_array(array, copy=copy)
            assert back.dtype == value.dtype and back.shape == value.shape and np.array_equal(back, value)
            if array is ours or value.flags.c_contiguous:  # else np.load's own (Fortran order)
                assert back.flags.writeable == copy
    np.testing.assert_array_equal(ours.numpy(), value)
