"""A cohort's seeds, vectorized, are numpy's SeedSequence words."""

import numpy as np
import pytest

from clients.seeds import client_seed, client_seeds


def reference(seed, server_round, client, stream):
    return int(np.random.SeedSequence([seed, server_round, client, stream]).generate_state(1)[0])


def test_small_known_values():
    assert client_seed(0, 1, 2, 0) == reference(0, 1, 2, 0)
    assert client_seeds(0, 1, [2, 0, 7], 1) == [reference(0, 1, c, 1) for c in (2, 0, 7)]
    assert client_seeds(3, 4, []) == []


@pytest.mark.parametrize("trial", range(40))
def test_every_word_equals_numpys(trial):
    rng = np.random.default_rng(trial)
    top = 2 ** 32 if trial % 2 else 1000  # the whole uint32 range, and the usual small ids
    seed, server_round, stream = (int(v) for v in rng.integers(0, top, 3))
    clients = [0, 2 ** 32 - 1 if trial % 2 else 999, *rng.integers(0, top, 30).tolist()]
    assert client_seeds(seed, server_round, clients, stream) == \
        [reference(seed, server_round, c, stream) for c in clients]


def test_values_beyond_one_word_take_numpys_path():
    big = [2 ** 32, 2 ** 40 + 3]
    assert client_seeds(2 ** 33, 1, big) == [reference(2 ** 33, 1, c, 0) for c in big]
    assert client_seeds(5, 1, [1, 2 ** 35]) == [reference(5, 1, c, 0) for c in (1, 2 ** 35)]
