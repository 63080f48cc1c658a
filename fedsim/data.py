"""Datasets and client splits.

A dataset is arrays plus what a model must know (input shape, classes). A split gives
every client its own train and test indices. Partitioners only split the training pool;
each client's test set is then drawn from the test pool with the same class mix as its
training data (FedRep's protocol), so the rule holds for every partitioner, including
ones users register.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedsim.config import Config, ConfigError


class DataError(ValueError):
    """A dataset or a split cannot be used (missing file, empty client, bad indices)."""


@dataclass(frozen=True)
class ClientSplit:
    """Indices into the dataset that one client holds (``val``: carved out of its
    training data by ``val-fraction``, empty without)."""

    train: np.ndarray
    test: np.ndarray
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class Dataset:
    """Features ``x`` (float32, N × input_shape), targets ``y`` (int64 class labels, or
    float32 values when ``num_classes`` is 0: regression) and metadata. ``natural`` is the
    dataset's own client split (``partitioner = "natural"``); ``true_body`` the
    ground-truth representation of synthetic data, if known."""

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    model: str = "auto"
    natural: list[ClientSplit] | None = None
    true_body: np.ndarray | None = None
    domains: np.ndarray | None = None  # domain index per sample (multi-domain data)
    domain_names: tuple[str, ...] = ()
    test_mask: np.ndarray | None = None  # the dataset's own test set (True = test sample)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def load_digits_dataset(config: Config) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images), pixels scaled to [0, 1]. The
    file is read directly (what ``sklearn.datasets.load_digits`` reads): importing
    scikit-learn would cost ~1.6 s in the driver and again in every actor."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError("dataset = 'digits' needs scikit-learn (pip install scikit-learn)")
    table = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    x = (table[:, :-1] / 16.0).astype(np.float32)
    return Dataset("digits", x, table[:, -1].astype(np.int64), 10)


def linear_regression(config: Config) -> Dataset:
    """FedRep's linear setting (Collins et al. 2021, Sec. 5.1): yᵢ = xᵀB*wᵢ + ε with
    x ~ N(0, I_d), B* ∈ R^{d×k} with orthonormal columns, wᵢ ~ N(0, I_k) per client,
    ε ~ N(0, ``noise-std``²). Each client has ``samples-per-client`` training samples
    and 100 test samples; ``d = linear-dim``, ``k = linear-rank``."""
    rng = np.random.default_rng([config.seed, 7])
    d, k, n, m, m_test = (config.linear_dim, config.linear_rank, config.num_clients,
                          config.samples_per_client, 100)
    true_body, _ = np.linalg.qr(rng.standard_normal((d, k)))
    heads = rng.standard_normal((n, k))
    x = rng.standard_normal((n, m + m_test, d))
    y = np.einsum("nsd,dk,nk->ns", x, true_body, heads) + config.noise_std * rng.standard_normal(
        (n, m + m_test)
    )
    offsets = np.arange(n)[:, None] * (m + m_test)
    natural = [
        ClientSplit(offsets[i, 0] + np.arange(m), offsets[i, 0] + np.arange(m, m + m_test))
        for i in range(n)
    ]
    return Dataset(
        "linear-regression", x.reshape(-1, d).astype(np.float32), y.reshape(-1).astype(np.float32),
        num_classes=0, model="linear", natural=natural, true_body=true_body,
    )


def synthetic(config: Config) -> Dataset:
    """FedProx's Synthetic(α, β) (Li et al., MLSys 2020, Sec. 5.1; LEAF): client k labels
    x ∈ R⁶⁰ by y = argmax softmax(Wₖx + bₖ) over 10 classes, with Wₖ, bₖ ~ N(uₖ, 1),
    uₖ ~ N(0, α); x ~ N(vₖ, Σ), Σⱼⱼ = j^-1.2, vₖ ~ N(Bₖ, 1), Bₖ ~ N(0, β). Each client
    has ``samples-per-client`` training and max(5, m/4) test samples (the paper draws
    power-law sizes; equal sizes keep scaling runs comparable). Any number of clients:
    the scaling benchmark's data."""
    rng = np.random.default_rng([config.seed, 11])
    n, m, d, c = config.num_clients, config.samples_per_client, 60, 10
    m_test = max(5, m // 4)
    u = rng.normal(0, np.sqrt(config.synthetic_alpha), n)
    big_b = rng.normal(0, np.sqrt(config.synthetic_beta), n)
    normal = functools.partial(rng.standard_normal, dtype=np.float32)
    weight = u[:, None, None].astype(np.float32) + normal((n, c, d))
    bias = u[:, None].astype(np.float32) + normal((n, c))
    v = big_b[:, None].astype(np.float32) + normal((n, d))
    scale = (np.arange(1, d + 1) ** -0.6).astype(np.float32)  # sqrt of Σⱼⱼ = j^-1.2
    x = v[:, None, :] + normal((n, m + m_test, d)) * scale
    y = np.argmax(np.matmul(x, weight.transpose(0, 2, 1)) + bias[:, None, :], axis=2)
    starts = np.arange(n) * (m + m_test)
    natural = [ClientSplit(s + np.arange(m), s + np.arange(m, m + m_test)) for s in starts]
    return Dataset("synthetic", x.reshape(-1, d), y.reshape(-1).astype(np.int64), c, natural=natural)


DATASETS: dict[str, Callable[[Config], Dataset]] = {
    "digits": load_digits_dataset,
    "linear-regression": linear_regression,
    "synthetic": synthetic,
}

DATASET_DEFAULTS: dict[str, dict[str, object]] = {
    # FedRep's linear experiment: all clients every round, heads solved exactly, one
    # full-batch gradient step on the body, QR after averaging.
    "linear-regression": {
        "partitioner": "natural", "num_clients": 100, "fraction_train": 1.0, "num_rounds": 300,
        "head_solver": "lstsq", "body_epochs": 1, "local_epochs": 1, "batch_size": 100000,
        "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "body_qr": True,
    },
    "synthetic": {"partitioner": "natural"},
}
"""Per-dataset defaults, used for every key the config file and --set leave unset."""

Partitioner = Callable[[np.ndarray, int, np.random.Generator, "Config"], list[np.ndarray]]
"""(train labels, number of clients, seeded RNG, config) -> one index array per client."""


def register_partitioner(name: str) -> Callable[[Partitioner], Partitioner]:
    """Decorator that makes a split function available as ``partitioner = name``."""

    def add(fn: Partitioner) -> Partitioner:
        PARTITIONERS[name] = fn
        return fn

    return add


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator, config: Config):
    """Shuffle and cut into ``num_clients`` near-equal parts."""
    return np.array_split(rng.permutation(len(labels)), num_clients)


def dirichlet(labels: np.ndarray, num_clients: int, rng: np.random.Generator, config: Config):
    """Per class, client shares drawn from Dirichlet(``dirichlet-alpha``); redrawn (up to
    100 times) until every client holds at least two samples."""
    classes = np.unique(labels)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, config.dirichlet_alpha))
            cuts = np.round(np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= 2:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise DataError(
        f"dirichlet-alpha = {config.dirichlet_alpha} with num-clients = {num_clients} left a "
        f"client with fewer than 2 samples in 100 draws; raise dirichlet-alpha or lower num-clients"
    )


def shards(labels: np.ndarray, num_clients: int, rng: np.random.Generator, config: Config):
    """Pathological split: every client gets ``classes-per-client`` distinct classes, each
    class used by a near-equal number of clients and its samples cut evenly among them."""
    classes = np.unique(labels)
    k = config.classes_per_client
    if k > len(classes):
        raise DataError(
            f"classes-per-client = {k} but the dataset has only {len(classes)} classes"
        )
    # Deal classes round-robin from reshuffled decks: every class is used equally often
    # and a client never gets the same class twice.
    deck: list[int] = []
    assignment = []
    for _ in range(num_clients):
        chosen: list[int] = []
        while len(chosen) < k:
            if not deck:
                deck = rng.permutation(classes).tolist()
            pick = next((c for c in deck if c not in chosen), None)
            if pick is None:  # the deck holds only classes this client already has
                deck = rng.permutation(classes).tolist() + deck
                continue
            deck.remove(pick)
            chosen.append(pick)
        assignment.append(chosen)
    holders = {c: [i for i, a in enumerate(assignment) if c in a] for c in classes}
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c, owners in holders.items():
        if not owners:
            continue
        idx = rng.permutation(np.flatnonzero(labels == c))
        for owner, chunk in zip(owners, np.array_split(idx, len(owners))):
            parts[owner].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def size_skew(labels: np.ndarray, num_clients: int, rng: np.random.Generator, config: Config):
    """Quantity skew: iid samples, client sizes ∝ lognormal(0, ``size-sigma``) (a heavy
    right tail, as in FL benchmarks' power-law sizes), each client at least 2 samples."""
    n = len(labels)
    if n < 2 * num_clients:
        raise DataError(f"size: {n} training samples cannot give {num_clients} clients 2 samples each")
    weights = rng.lognormal(0.0, config.size_sigma, num_clients)
    sizes = 2 + np.floor(weights / weights.sum() * (n - 2 * num_clients)).astype(int)
    sizes[np.argmax(weights)] += n - sizes.sum()  # the remainder to the largest client
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])


PARTITIONERS: dict[str, Partitioner | None] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "shards": shards,
    "size": size_skew,
    "domain": None,  # one domain per client (round-robin); handled by make_split
    "file": None,  # reads ``split-file``; handled by make_split
    "natural": None,  # the dataset's own clients; handled by make_split
    "rotated": None,  # shards, client c's images rotated by (c mod num-rotations)·90°; see VIEWS
}
BUILTIN_PARTITIONERS = frozenset(PARTITIONERS)  # before any plugin registers its own

View = tuple[Callable[["Dataset", "Config"], "Dataset"],
             Callable[["Config", "Dataset", np.random.Generator], "list[ClientSplit]"]]
VIEWS: dict[str, View] = {}
"""Partitioners that also transform the dataset: name -> (the dataset they split, their
split), registered by their own modules (``fedsim.rotated``; imported by fedsim.validate)."""


@functools.lru_cache(maxsize=1)
def load_dataset(config: Config) -> Dataset:
    """The dataset named by ``config.dataset``. The last one is kept: the driver checks
    the split before Ray starts and the ServerApp then needs the same data (treat the
    arrays as read-only). A partitioner in :data:`VIEWS` transforms it first (``rotated``:
    its rotated copies)."""
    data = DATASETS[config.dataset](config)
    if config.partitioner in VIEWS:
        data = VIEWS[config.partitioner][0](data, config)
    return data


@functools.lru_cache(maxsize=1)
def client_splits(config: Config) -> list[ClientSplit]:
    """:func:`make_split` of the configured dataset, kept like :func:`load_dataset`'s
    result: the driver checks the split before Ray starts and the server then spreads
    the clients over the nodes by it (0.8 s at 10,000 clients; treat as read-only)."""
    return make_split(config, load_dataset(config))


def make_split(config: Config, data: Dataset) -> list[ClientSplit]:
    """Every client's train/test indices, deterministic in ``config.seed``."""
    rng = np.random.default_rng(config.seed)
    if config.partitioner == "file":
        splits = _split_from_file(Path(config.split_file), config, len(data.y), rng)
    elif config.partitioner == "natural":
        if data.natural is None:
            raise DataError(f"dataset {data.name!r} has no natural client split; use another partitioner")
        if len(data.natural) != config.num_clients:
            raise DataError(
                f"dataset {data.name!r} has {len(data.natural)} natural clients but "
                f"num-clients = {config.num_clients}"
            )
        splits = list(data.natural)
    elif config.partitioner == "domain":
        splits = _split_by_domain(data, config, rng)
    elif config.partitioner in VIEWS:
        splits = VIEWS[config.partitioner][1](config, data, rng)
    else:
        if config.partitioner in LABEL_PARTITIONERS and np.issubdtype(data.y.dtype, np.floating):
            raise DataError(f"partitioner {config.partitioner!r} deals clients classes, but dataset "
                            f"{data.name!r} has real-valued targets (regression); use iid or size")
        train_pool, test_pool = _pools(data, config.test_fraction, rng)
        trains = [train_pool[p] for p in _partition(config, data.y[train_pool], rng)]
        tests = match_test_split([data.y[t] for t in trains], test_pool, data.y[test_pool], rng)
        splits = [ClientSplit(np.sort(a), np.sort(b)) for a, b in zip(trains, tests)]
    _check_split(splits, config)
    return carve_validation(splits, config.val_fraction, config.seed) if config.val_fraction else splits


LABEL_PARTITIONERS = frozenset({"dirichlet", "shards"})  # built-ins that deal classes


def _partition(config: Config, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The registered partitioner's parts of the training pool, checked: one integer index
    array per client, each index in the pool once at most. A partitioner's own exception
    (a plugin's bug, or a split it cannot make) becomes a DataError naming it."""
    name = config.partitioner
    try:
        parts = PARTITIONERS[name](labels, config.num_clients, rng, config)  # type: ignore[misc]
    except (ConfigError, DataError):
        raise
    except Exception as exc:  # noqa: BLE001 - reported with the partitioner's name
        raise DataError(f"partitioner {name!r} raised {type(exc).__name__}: {exc} "
                        f"(num-clients = {config.num_clients}, {len(labels)} training samples)") from exc
    sequence = isinstance(parts, (list, tuple)) or (isinstance(parts, np.ndarray) and parts.ndim)
    if not sequence or len(parts) != config.num_clients:
        got = f"{len(parts)} parts" if sequence else f"a {type(parts).__name__}"
        raise DataError(f"partitioner {name!r} returned {got} for num-clients = {config.num_clients}; "
                        f"expected a list of one index array per client")
    out, seen = [], np.zeros(len(labels), dtype=bool)
    for client, part in enumerate(parts):
        idx = np.asarray(part)
        if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
            raise DataError(f"partitioner {name!r}, client {client}: expected a 1-d array of integer "
                            f"indices, got dtype {idx.dtype} and shape {idx.shape}")
        idx = idx.astype(np.int64)
        bad = idx[(idx < 0) | (idx >= len(labels))]
        if len(bad):
            raise DataError(f"partitioner {name!r}, client {client}: index {int(bad[0])} is out of "
                            f"range (the training pool has {len(labels)} samples: 0..{len(labels) - 1})")
        if len(np.unique(idx)) != len(idx) or seen[idx].any():
            raise DataError(f"partitioner {name!r}, client {client}: an index is used twice "
                            f"(within the client or by an earlier one)")
        seen[idx] = True
        out.append(idx)
    return out


def carve_validation(splits: list[ClientSplit], fraction: float, seed: int) -> list[ClientSplit]:
    """Every client's validation set: a seeded round(fraction·n) of its n training
    samples (at least one, and at least one left to train on), removed from its
    training set. The test sets are untouched."""
    out = []
    for client, split in enumerate(splits):
        n = len(split.train)
        count = min(max(1, round(fraction * n)), n - 1)
        if count < 1:
            raise DataError(f"val-fraction = {fraction}: client {client} has {n} training sample(s), "
                            f"too few to set any aside for validation")
        chosen = np.random.default_rng([seed, client, 8]).permutation(n)[:count]
        keep = np.ones(n, dtype=bool)
        keep[chosen] = False
        out.append(ClientSplit(split.train[keep], split.test, np.sort(split.train[chosen])))
    return out


def match_test_split(
    train_labels: list[np.ndarray], test_pool: np.ndarray, test_labels: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Deal the test pool to clients so each client's test classes follow its train classes:
    the test samples of class c go to the clients holding c, in proportion to how many
    training samples of c each holds."""
    out: list[list[int]] = [[] for _ in train_labels]
    for c in np.unique(test_labels):
        counts = np.array([(t == c).sum() for t in train_labels], dtype=np.float64)
        if counts.sum() == 0:
            continue
        idx = test_pool[rng.permutation(np.flatnonzero(test_labels == c))]
        cuts = np.round(np.cumsum(counts)[:-1] / counts.sum() * len(idx)).astype(int)
        for client, chunk in enumerate(np.split(idx, cuts)):
            out[client].extend(chunk.tolist())
    _lend_test_samples(out, train_labels, test_pool, test_labels)
    return [np.array(o, dtype=np.int64) for o in out]


def _lend_test_samples(out: list[list[int]], train_labels: list[np.ndarray], test_pool: np.ndarray,
                       test_labels: np.ndarray) -> None:
    """A small client can round down to no test sample at all: give it one of its most
    frequent training class, moved from the client holding most test samples of that
    class if that client keeps at least one, else shared with it (with more clients than
    test samples, test sets must overlap; train and test stay disjoint per client)."""
    needy = [client for client, held in enumerate(out) if not held and len(train_labels[client])]
    if not needy:
        return
    label_of = dict(zip(test_pool.tolist(), test_labels.tolist()))
    column = {c: j for j, c in enumerate(np.unique(test_labels).tolist())}
    held = np.zeros((len(out), len(column)), dtype=np.int64)  # test samples per client and class
    for client, samples in enumerate(out):
        for i in samples:
            held[client, column[label_of[i]]] += 1
    for client in needy:
        values, counts = np.unique(train_labels[client], return_counts=True)
        for c in values[np.argsort(-counts, kind="stable")].tolist():
            j = column.get(c)
            if j is None or held[:, j].max() == 0:
                continue  # no test sample of this class at all
            donor = int(np.argmax(held[:, j]))
            sample = next(i for i in out[donor] if label_of[i] == c)
            if held[donor, j] > 1:
                out[donor].remove(sample)
                held[donor, j] -= 1
            out[client].append(sample)
            held[client, j] += 1
            break


def _pools(data: Dataset, test_fraction: float, rng: np.random.Generator):
    """(train pool, test pool): the dataset's own test set if it has one, else a
    stratified ``test-fraction`` of every class."""
    if data.test_mask is not None:
        return np.flatnonzero(~data.test_mask), np.flatnonzero(data.test_mask)
    return _stratified_pools(data.y, test_fraction, rng)


def _split_by_domain(data: Dataset, config: Config, rng: np.random.Generator) -> list[ClientSplit]:
    """Client i holds domain i mod D (D = number of domains): the domain's training pool
    cut among its clients (iid, or with ``domain-split = "shards"`` ``classes-per-client``
    classes each), test data drawn from the same domain and classes. With
    ``target-domain`` the last ``target-clients`` clients hold that domain alone (cut iid;
    their training part is the unlabeled target data) and the other clients share the
    remaining source domains."""
    if data.domains is None:
        raise DataError(f"partitioner = 'domain' needs a multi-domain dataset; {data.name!r} has one domain")
    names = list(data.domain_names)
    sources = list(range(len(names)))
    holders = {d: [] for d in sources}
    clients = list(range(config.num_clients))
    target = None
    if config.target_domain:
        if config.target_domain not in names:
            raise DataError(f"target-domain = {config.target_domain!r} is not a domain of "
                            f"{data.name!r} (domains: {', '.join(names)})")
        target = names.index(config.target_domain)
        sources.remove(target)
        holders[target] = config.targets()
        clients = clients[: len(clients) - len(holders[target])]
    if len(clients) < len(sources):
        needed = len(sources) + len(config.targets())
        raise DataError(f"partitioner = 'domain': num-clients = {config.num_clients} is fewer than "
                        f"the {needed} clients the {len(names)} domains of {data.name!r} need")
    for i, client in enumerate(clients):
        holders[sources[i % len(sources)]].append(client)
    train_pool, test_pool = _pools(data, config.test_fraction, rng)
    splits: list[ClientSplit | None] = [None] * config.num_clients
    for d, owners in holders.items():
        if not owners:
            continue
        train_d = train_pool[data.domains[train_pool] == d]
        test_d = test_pool[data.domains[test_pool] == d]
        cut = shards if config.domain_split == "shards" and d != target else iid
        parts = [train_d[p] for p in cut(data.y[train_d], len(owners), rng, config)]
        tests = match_test_split([data.y[p] for p in parts], test_d, data.y[test_d], rng)
        for owner, train, test in zip(owners, parts, tests):
            splits[owner] = ClientSplit(np.sort(train), np.sort(test))
    return splits  # type: ignore[return-value]


def _stratified_pools(y: np.ndarray, test_fraction: float, rng: np.random.Generator):
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _split_from_file(path: Path, config: Config, n: int, rng: np.random.Generator):
    """JSON ``{"0": [indices...], ...}`` (cut into train/test by ``test-fraction``) or
    ``{"0": {"train": [...], "test": [...]}, ...}``; keys are client ids 0..num-clients-1."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"split-file {str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"split-file {str(path)!r}: expected an object mapping client id -> indices")
    expected = [str(i) for i in range(config.num_clients)]
    if sorted(raw, key=lambda k: (len(k), k)) != expected:
        raise DataError(
            f"split-file {str(path)!r} has clients {sorted(raw)[:5]}...; expected exactly "
            f"'0'..'{config.num_clients - 1}' for num-clients = {config.num_clients}"
        )
    seen = np.zeros(n, dtype=bool)
    splits = []
    for key in expected:
        entry = raw[key]
        if isinstance(entry, dict) and set(entry) == {"train", "test"}:
            train, test = _indices(entry["train"], key, n, path), _indices(entry["test"], key, n, path)
        elif isinstance(entry, list):
            idx = rng.permutation(_indices(entry, key, n, path))
            n_test = int(round(len(idx) * config.test_fraction))
            train, test = idx[n_test:], idx[:n_test]
        else:
            raise DataError(
                f"split-file {str(path)!r}, client {key}: expected a list of indices or "
                f"{{'train': [...], 'test': [...]}}"
            )
        both = np.concatenate([train, test])
        if len(np.unique(both)) != len(both) or seen[both].any():
            raise DataError(f"split-file {str(path)!r}, client {key}: an index is used twice")
        seen[both] = True
        splits.append(ClientSplit(np.sort(train), np.sort(test)))
    return splits


def _indices(values: object, key: str, n: int, path: Path) -> np.ndarray:
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise DataError(f"split-file {str(path)!r}, client {key}: indices must be integers")
    idx = np.array(values, dtype=np.int64)
    bad = idx[(idx < 0) | (idx >= n)]
    if len(bad):
        raise DataError(
            f"split-file {str(path)!r}, client {key}: index {int(bad[0])} is out of range "
            f"(the dataset has {n} samples: 0..{n - 1})"
        )
    return idx


def _check_split(splits: list[ClientSplit], config: Config) -> None:
    for name in ("train", "test"):
        empty = [i for i, s in enumerate(splits) if len(getattr(s, name)) == 0]
        if empty:
            raise DataError(
                f"the split ({config.partitioner}, num-clients = {config.num_clients}) leaves "
                f"client(s) {empty[:10]} without {name} data; use fewer clients or another split"
            )


def register_flwr_partitioner(name: str, make: Callable[[int], object]) -> None:
    """Use any ``flwr_datasets`` partitioner as ``partitioner = name``. ``make(num_clients)``
    returns the partitioner, e.g. ``lambda n: DirichletPartitioner(num_partitions=n,
    partition_by="label", alpha=0.3, seed=0)``. It sees the training pool as a Hugging
    Face dataset with columns ``label`` and ``index`` (needs the optional extra:
    ``pip install 'fedsim[flwr-datasets]'``)."""

    def split(labels: np.ndarray, num_clients: int, rng: np.random.Generator, config: Config):
        try:
            from datasets import Dataset as HFDataset
        except ImportError:
            raise DataError(
                f"partitioner {name!r} wraps a flwr_datasets partitioner: "
                f"pip install 'fedsim[flwr-datasets]'"
            ) from None
        partitioner = make(num_clients)
        partitioner.dataset = HFDataset.from_dict(  # type: ignore[attr-defined]
            {"label": labels.tolist(), "index": list(range(len(labels)))}
        )
        return [
            np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)  # type: ignore[attr-defined]
            for i in range(num_clients)
        ]

    PARTITIONERS[name] = split
