"""Offline readers for real dataset files already on disk.

Every reader returns numpy arrays: images ``x`` as float32 in [0, 1] with shape
(N, C, H, W) (channels first, C = 1 for grey) and labels ``y`` as int64. Nothing is ever
downloaded: when a file is missing, unreadable or corrupt the reader raises
:class:`fedsim.data.DataError` naming the path and saying how to get the data.

Formats: IDX (MNIST, Fashion-MNIST), torchvision's CIFAR-10/100 python pickles (read with
a restricted unpickler that refuses every global except numpy's array reconstruction),
LEAF FEMNIST JSON and KD3A's Digit-Five ``.mat`` files.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.data import DataError

PathLike = str | os.PathLike[str]
Split = tuple[np.ndarray, np.ndarray]

# ---------------------------------------------------------------------------------------------
# Where the data comes from (used in error messages)
# ---------------------------------------------------------------------------------------------

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

HOW_TO_GET = {
    "mnist": "download the four IDX files from https://yann.lecun.com/exdb/mnist/ (or run "
    "torchvision.datasets.MNIST(root, download=True) once on a machine with internet) into {root}",
    "fashion-mnist": "install the Debian package: apt-get install dataset-fashion-mnist (files land in "
    f"{DEBIAN_FASHION_MNIST_DIR}), or download the IDX files from "
    "https://github.com/zalandoresearch/fashion-mnist into {root}",
    "cifar10": "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack it in {root} "
    "(or run torchvision.datasets.CIFAR10(root, download=True) once on a machine with internet)",
    "cifar100": "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and unpack it in {root} "
    "(or run torchvision.datasets.CIFAR100(root, download=True) once on a machine with internet)",
    "femnist": "generate it with LEAF (https://github.com/TalwalkarLab/leaf, data/femnist: "
    "./preprocess.sh -s niid --sf 1.0 -k 0 -t sample) and copy data/train and data/test into {root}",
    "digit5": "get the Digit-Five .mat files as described in KD3A's README "
    "(https://github.com/FengHZ/KD3A) and put them in {root} or {root}/<domain>/",
}


def _how(dataset: str, root: PathLike | None) -> str:
    return HOW_TO_GET[dataset].format(root=root if root is not None else "<root>")


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _read_bytes(path: Path, how: str) -> bytes:
    """Whole file, gunzipped when it ends in ``.gz``; any I/O or gzip failure is a DataError."""
    if not path.is_file():
        raise DataError(f"missing file {path}; {how}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path} ({e}); the file is corrupt or truncated: {how}") from e


def _find_file(dirs: Iterable[Path], names: Sequence[str], how: str) -> Path:
    """First existing ``dir/name``; the error lists every place searched."""
    tried = []
    for d in dirs:
        for name in names:
            p = d / name
            if p.is_file():
                return p
            tried.append(str(p))
    raise DataError(f"missing file {names[0]}: none of {', '.join(tried)} exists; {how}")


def _to_unit(x: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: integer images (or float images above 1) are divided by 255."""
    x = np.asarray(x)
    if x.size and (np.issubdtype(x.dtype, np.integer) or float(np.nanmax(x)) > 1.0):
        x = x.astype(np.float32) / 255.0
    return np.clip(x.astype(np.float32, copy=False), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# IDX: MNIST and Fashion-MNIST
# ---------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def _parse_idx(path: Path, magic: int, ndim: int, how: str) -> np.ndarray:
    raw = _read_bytes(path, how)
    header = 4 + 4 * ndim
    found = struct.unpack(">i", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic:
        raise DataError(f"{path} has magic number {found}, expected {magic}: not an IDX file of this "
                        f"kind or corrupt; {how}")
    if len(raw) < header:
        raise DataError(f"{path} is truncated ({len(raw)} bytes, header needs {header}); {how}")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path} has {len(raw)} bytes but its header {tuple(dims)} needs {expected}: "
                        f"truncated or corrupt; {how}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(path: PathLike, how: str | None = None) -> np.ndarray:
    """IDX image file (magic 2051, gzipped if the name ends in ``.gz``) as (N, 1, H, W) float32."""
    path = Path(path)
    images = _parse_idx(path, IDX_IMAGES_MAGIC, 3, how or _how("mnist", path.parent))
    return np.divide(images, np.float32(255.0), dtype=np.float32)[:, None]  # one pass, same values


def read_idx_labels(path: PathLike, how: str | None = None) -> np.ndarray:
    """IDX label file (magic 2049, gzipped if the name ends in ``.gz``) as (N,) int64."""
    path = Path(path)
    return _parse_idx(path, IDX_LABELS_MAGIC, 1, how or _how("mnist", path.parent)).astype(np.int64)


MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
TORCHVISION_SUBDIR = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _mnist_dirs(root: PathLike | None, kind: str) -> list[Path]:
    if root is None:
        return [DEBIAN_FASHION_MNIST_DIR] if kind == "fashion-mnist" else []
    root = Path(root)
    return [root, root / TORCHVISION_SUBDIR[kind] / "raw"]


def read_mnist_like(root: PathLike | None, kind: str = "mnist") -> tuple[Split, Split]:
    """MNIST or Fashion-MNIST (``kind`` = "mnist" | "fashion-mnist") from the four standard IDX
    files, raw or ``.gz``, in ``root`` or torchvision's ``root/MNIST/raw`` /
    ``root/FashionMNIST/raw``. ``root=None`` means the Debian package's directory
    (/usr/share/datasets/fashion-mnist) for Fashion-MNIST. Returns
    ``((x_train, y_train), (x_test, y_test))``, x of shape (N, 1, 28, 28)."""
    if kind not in TORCHVISION_SUBDIR:
        raise ValueError(f"kind must be one of {sorted(TORCHVISION_SUBDIR)}, not {kind!r}")
    how = _how(kind, root)
    dirs = _mnist_dirs(root, kind)
    if not dirs:
        raise DataError(f"no root directory given for {kind}; {how}")
    found = {k: _find_file(dirs, (name, name + ".gz"), how) for k, name in MNIST_FILES.items()}
    splits = []
    for part in ("train", "test"):
        x = read_idx_images(found[f"{part}_x"], how)
        y = read_idx_labels(found[f"{part}_y"], how)
        if len(x) != len(y):
            raise DataError(f"{found[f'{part}_x']} holds {len(x)} images but {found[f'{part}_y']} "
                            f"{len(y)} labels; {how}")
        splits.append((x, y))
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python pickles
# ---------------------------------------------------------------------------------------------

# Globals a numpy-array pickle may name. Real CIFAR files (Python 2, protocol 2) need only
# _reconstruct, ndarray and dtype; the rest covers the same data re-pickled by Python 3
# (protocol 2 stores bytes via _codecs.encode, protocol 5 arrays via _frombuffer). All of them
# only build arrays or bytes; nothing else can be called.
SAFE_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle names a global outside :data:`SAFE_PICKLE_GLOBALS`."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in :data:`SAFE_PICKLE_GLOBALS`."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise ForbiddenGlobal(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def load_array_pickle(path: Path, how: str) -> object:
    """Unpickle ``path`` (Python 2 strings become bytes) allowing only numpy arrays, dicts,
    lists, bytes, str and numbers; anything else (e.g. ``os.system``) is a DataError and is
    never called."""
    raw = _read_bytes(path, how)
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except ForbiddenGlobal as e:
        raise DataError(f"refusing to load {path}: {e}; a CIFAR pickle holds only dicts, lists and "
                        f"numpy arrays; {how}") from e
    except Exception as e:  # truncated or garbage pickles raise many types
        raise DataError(f"cannot unpickle {path} ({type(e).__name__}: {e}): corrupt or truncated; "
                        f"{how}") from e


def _get(d: dict, key: str) -> object:
    """``d[b"key"]`` or ``d["key"]`` (pickles written by Python 3 may use str keys)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _cifar_batch(path: Path, label_key: str, how: str) -> Split:
    batch = load_array_pickle(path, how)
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, expected a dict; {how}")
    data, labels = _get(batch, "data"), _get(batch, label_key)
    if data is None or labels is None:
        raise DataError(f"{path} lacks the keys b'data' and b'{label_key}'; {how}")
    data = np.asarray(data)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(y):
        raise DataError(f"{path}: data has shape {data.shape} and {len(y)} labels, expected "
                        f"(N, 3072) with N labels; {how}")
    return _to_unit(data.reshape(-1, 3, 32, 32)), y


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def read_cifar(root: PathLike, name: str = "cifar10") -> tuple[Split, Split]:
    """CIFAR-10 or CIFAR-100 (``name`` = "cifar10" | "cifar100", fine labels) from torchvision's
    layout ``root/cifar-10-batches-py/{data_batch_1..5, test_batch}`` or
    ``root/cifar-100-python/{train, test}``. Returns ``((x_train, y_train), (x_test, y_test))``,
    x of shape (N, 3, 32, 32)."""
    if name not in CIFAR_LAYOUT:
        raise ValueError(f"name must be one of {sorted(CIFAR_LAYOUT)}, not {name!r}")
    subdir, train_files, test_files, label_key = CIFAR_LAYOUT[name]
    how = _how(name, root)
    base = Path(root) / subdir
    splits = []
    for files in (train_files, test_files):
        parts = [_cifar_batch(base / f, label_key, how) for f in files]
        splits.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------------------
# LEAF FEMNIST JSON
# ---------------------------------------------------------------------------------------------

FEMNIST_CLASSES = 62
Writer = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _leaf_file(path: Path, how: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One LEAF JSON file as {writer: (x (n,1,28,28), y (n,))}."""
    try:
        doc = json.loads(_read_bytes(path, how))
        users = doc["user_data"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a LEAF JSON file ({type(e).__name__}: {e}); {how}") from e
    out = {}
    for user, d in users.items():
        try:
            x = np.asarray(d["x"], dtype=np.float32).reshape(-1, 1, 28, 28)
            y = np.asarray(d["y"], dtype=np.int64).reshape(-1)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: writer {user!r} has malformed x/y ({e}); expected 784 floats per "
                            f"sample; {how}") from e
        if len(x) != len(y) or (y.size and (y.min() < 0 or y.max() >= FEMNIST_CLASSES)):
            raise DataError(f"{path}: writer {user!r} has {len(x)} images, {len(y)} labels, labels must "
                            f"be in 0..{FEMNIST_CLASSES - 1}; {how}")
        out[str(user)] = (np.clip(x, 0.0, 1.0), y)
    return out


def _leaf_merge(files: Iterable[Path], how: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    merged: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for f in files:
        for user, xy in _leaf_file(f, how).items():
            merged.setdefault(user, []).append(xy)
    return {u: (np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps]))
            for u, ps in merged.items()}


def _json_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.json")) if d.is_dir() else []


def _leaf_sources(root_or_files: PathLike | Sequence[PathLike], how: str) -> tuple[list[Path], list[Path]]:
    """(train files, test files) from a directory or an explicit list of JSON files."""
    if not isinstance(root_or_files, str | os.PathLike):
        files = [Path(f) for f in root_or_files]
        if not files:
            raise DataError(f"no LEAF JSON files given; {how}")
        return files, []
    root = Path(root_or_files)
    if not root.is_dir():
        raise DataError(f"missing directory {root}; {how}")
    for base in (root, root / "data"):
        train, test = _json_files(base / "train"), _json_files(base / "test")
        if train:
            return train, test
    for d in (root, root / "all_data", root / "data" / "all_data"):
        if files := _json_files(d):
            return files, []
    raise DataError(f"no LEAF JSON files in {root}, {root}/train or {root}/all_data; {how}")


def read_leaf_femnist(root_or_files: PathLike | Sequence[PathLike]) -> list[Writer]:
    """LEAF FEMNIST, per writer: ``[(writer_id, x_train, y_train, x_test, y_test), ...]`` with x of
    shape (n, 1, 28, 28) float32 (LEAF's values, kept as they are: ink dark on white) and y in
    0..61. ``root_or_files`` is a directory holding ``train/*.json`` and ``test/*.json`` (also
    under ``data/``), or one directory of JSON files (``*.json``, ``all_data/*.json``), or a list
    of JSON files; without a test directory everything is train and the test arrays are empty
    (the caller splits)."""
    how = _how("femnist", root_or_files if isinstance(root_or_files, str | os.PathLike) else None)
    train_files, test_files = _leaf_sources(root_or_files, how)
    train, test = _leaf_merge(train_files, how), _leaf_merge(test_files, how)
    empty = (np.zeros((0, 1, 28, 28), np.float32), np.zeros(0, np.int64))
    writers = list(train) + [u for u in test if u not in train]
    return [(u, *train.get(u, empty), *test.get(u, empty)) for u in writers]


# ---------------------------------------------------------------------------------------------
# Digit-Five .mat files (KD3A)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatPart:
    """Where one split lives: the file, candidate image keys (first present wins) and the label
    key. Keys may index nested MATLAB cells, e.g. ``dataset[0][1]``."""

    file: str
    x_keys: tuple[str, ...]
    y_key: str


# domain -> alternative layouts, each (train part, test part); the first whose train file
# exists is used. KD3A's datasets/DigitFive.py reads the first layout of each domain, all files
# in one folder (base/dataset/DigitFive/).
DIGIT5_LAYOUTS: dict[str, list[tuple[MatPart, MatPart]]] = {
    "mnist": [(MatPart("mnist_data.mat", ("train_32", "train_28"), "label_train"),
               MatPart("mnist_data.mat", ("test_32", "test_28"), "label_test"))],
    "mnistm": [(MatPart("mnistm_with_label.mat", ("train",), "label_train"),
                MatPart("mnistm_with_label.mat", ("test",), "label_test"))],
    "svhn": [(MatPart("svhn_train_32x32.mat", ("X",), "y"),
              MatPart("svhn_test_32x32.mat", ("X",), "y"))],
    "syn": [(MatPart("synth_train_32x32.mat", ("X",), "y"),
             MatPart("synth_test_32x32.mat", ("X",), "y")),
            (MatPart("syn_number.mat", ("train_data",), "train_label"),
             MatPart("syn_number.mat", ("test_data",), "test_label"))],
    "usps": [(MatPart("usps_28x28.mat", ("dataset[0][0]",), "dataset[0][1]"),
              MatPart("usps_28x28.mat", ("dataset[1][0]",), "dataset[1][1]"))],
}
DIGIT5_SIZE = 32


def _digit5_dirs(root: Path, domain: str) -> list[Path]:
    return [root / domain, root, root / "DigitFive", root / "dataset" / "DigitFive"]


def _load_mat(path: Path, how: str, cache: dict[Path, dict]) -> dict:
    if path not in cache:
        from scipy.io import loadmat

        if not path.is_file():
            raise DataError(f"missing file {path}; {how}")
        try:
            cache[path] = loadmat(path)
        except Exception as e:  # scipy raises ValueError, TypeError, OSError, ... on bad files
            raise DataError(f"cannot read {path} as a MATLAB file ({type(e).__name__}: {e}); {how}") from e
    return cache[path]


def _mat_value(mat: dict, key: str, path: Path, how: str) -> np.ndarray | None:
    """``mat[name][i][j]...`` for a key like ``dataset[0][1]``; None when ``name`` is absent."""
    name, *idx = re.findall(r"[^\[\]]+", key)
    if name not in mat:
        return None
    value = mat[name]
    try:
        for i in idx:
            value = value[int(i)]
    except (IndexError, TypeError) as e:
        raise DataError(f"{path}: cannot index {key} ({e}); {how}") from e
    return np.asarray(value)


def _digit5_labels(y: np.ndarray, path: Path, how: str) -> np.ndarray:
    """One-hot (argmax) or 1-D labels; SVHN/USPS/SynthDigits' label 10 means digit 0."""
    y = np.asarray(y)
    y = y.argmax(axis=1) if y.ndim == 2 and min(y.shape) > 1 else y.reshape(-1)
    y = y.astype(np.int64)
    y[y == 10] = 0
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels outside 0..10; {how}")
    return y


def _images_nchw(x: np.ndarray, n: int, path: Path, how: str) -> np.ndarray:
    """Any of (N,H*W), (N,H,W), (N,H,W,C), (N,C,H,W), (H,W,C,N) as (N, C, H, W)."""
    bad = DataError(f"{path}: images of shape {x.shape} do not match {n} labels; {how}")
    if x.ndim >= 2 and x.shape[0] != n and x.shape[-1] == n:
        x = np.moveaxis(x, -1, 0)
    if x.ndim < 2 or x.shape[0] != n:
        raise bad
    if x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise bad
        return x.reshape(n, 1, side, side)
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    raise bad


def resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, size, size), bilinear with half-pixel centres (like PIL/torch)."""
    def coords(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (c - lo).astype(np.float32)

    h0, h1, wh = coords(x.shape[2])
    w0, w1, ww = coords(x.shape[3])
    rows = x[:, :, h0] * (1 - wh)[:, None] + x[:, :, h1] * wh[:, None]
    return rows[..., w0] * (1 - ww) + rows[..., w1] * ww


def _digit5_split(part: MatPart, dirs: list[Path], how: str, cache: dict[Path, dict]) -> Split:
    path = _find_file(dirs, (part.file,), how)
    mat = _load_mat(path, how, cache)
    x = next((v for k in part.x_keys if (v := _mat_value(mat, k, path, how)) is not None), None)
    y = _mat_value(mat, part.y_key, path, how)
    if x is None or y is None:
        raise DataError(f"{path} lacks the keys {' or '.join(part.x_keys)} / {part.y_key}; {how}")
    y = _digit5_labels(y, path, how)
    x = _to_unit(_images_nchw(x, len(y), path, how))
    if x.shape[2:] != (DIGIT5_SIZE, DIGIT5_SIZE):
        x = resize_bilinear(x, DIGIT5_SIZE)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return np.ascontiguousarray(x, dtype=np.float32), y


def read_digit5(root: PathLike, domain: str) -> tuple[Split, Split]:
    """One Digit-Five domain ("mnist", "mnistm", "svhn", "syn", "usps") from KD3A's ``.mat`` files
    (see :data:`DIGIT5_LAYOUTS`), searched in ``root/<domain>/``, ``root``, ``root/DigitFive``
    and ``root/dataset/DigitFive``. Returns ``((x_train, y_train), (x_test, y_test))``, x of
    shape (N, 3, 32, 32) (grey repeated, 28×28 resized bilinearly), y in 0..9."""
    if domain not in DIGIT5_LAYOUTS:
        raise ValueError(f"domain must be one of {sorted(DIGIT5_LAYOUTS)}, not {domain!r}")
    how = _how("digit5", root)
    dirs = _digit5_dirs(Path(root), domain)
    layouts = DIGIT5_LAYOUTS[domain]
    train_part, test_part = next(
        (lay for lay in layouts if any((d / lay[0].file).is_file() for d in dirs)), layouts[0]
    )
    cache: dict[Path, dict] = {}
    return _digit5_split(train_part, dirs, how, cache), _digit5_split(test_part, dirs, how, cache)
