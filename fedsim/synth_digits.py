"""Offline Digit-Five look-alike: five synthetic digit domains built only from files bundled
with matplotlib (DejaVu fonts) and scikit-learn (8×8 digits, two sample photos).

=========  ===============================================================================
domain     how it is made
=========  ===============================================================================
mnist      DejaVu Sans glyphs, white on black, random rotation/scale/shift/shear/stroke and an
           elastic distortion so they look handwritten
usps       scikit-learn's ``load_digits`` 8×8 images upsampled to 32×32: thick and blurry
syn        many DejaVu faces (sans/serif/mono, bold/italic) in random colours on random solid or
           gradient backgrounds (like SynthDigits)
mnistm     "mnist" digits blended with random crops of ``load_sample_images`` photos as
           |photo − digit| (like MNIST-M)
svhn       a centre digit with partial neighbours at the left/right edges, random colours, low
           contrast, uneven light, blur and noise (like SVHN crops)
=========  ===============================================================================

Images are (N, 3, 32, 32) float32 in [0, 1], labels int64 0..9, all determined by the seed.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

DOMAINS = ("mnist", "mnistm", "usps", "syn", "svhn")
SYNTH_VERSION = 1  # bump when generation changes: old cache files are then ignored
SIZE = 32
GLYPH = 48  # side of the canonical glyph frame; the digit is GLYPH_HEIGHT pixels high in it
GLYPH_HEIGHT = 32
DEFAULT_CACHE_DIR = Path("~/.cache/fedsim/digit5-synth")

SANS_FACES = ("DejaVuSans", "DejaVuSans-Oblique", "DejaVuSans-Bold", "DejaVuSansMono")
ALL_FACES = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
)
STROKES = (-1, 0, 1, 2)  # erode by 1 px, as is, dilate by 1 or 2 px (in the 48-px glyph frame)


# ---------------------------------------------------------------------------------------------
# Glyph bank: every bundled face × stroke width × digit, rendered once with Agg
# ---------------------------------------------------------------------------------------------


def _render_face(face: str) -> np.ndarray:
    """Digits 0..9 of one DejaVu face as (10, GLYPH, GLYPH) ink masks in [0, 1], each cropped to
    its ink, scaled to GLYPH_HEIGHT pixels high and centred."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    cell, dpi = 80, 72
    fig = Figure(figsize=(10 * cell / dpi, cell / dpi), dpi=dpi, facecolor="black")
    font = FontProperties(fname=Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{face}.ttf")
    for d in range(10):
        fig.text((d + 0.5) / 10, 0.5, str(d), fontproperties=font, size=56, color="white",
                 ha="center", va="center")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ink = np.asarray(canvas.buffer_rgba())[..., 0].astype(np.float32) / 255.0
    return np.stack([_canonical(ink[:, d * cell:(d + 1) * cell]) for d in range(10)])


def _canonical(ink: np.ndarray) -> np.ndarray:
    """Crop an ink mask to its bounding box, scale it to GLYPH_HEIGHT high, centre in the frame."""
    rows, cols = np.nonzero(ink > 0.05)
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    zoom = GLYPH_HEIGHT / crop.shape[0]
    crop = np.clip(ndimage.zoom(crop, zoom, order=1), 0, 1)[:, :GLYPH - 4]
    out = np.zeros((GLYPH, GLYPH), np.float32)
    top, left = (GLYPH - crop.shape[0]) // 2, (GLYPH - crop.shape[1]) // 2
    out[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return out


def _restroke(glyphs: np.ndarray, stroke: int) -> np.ndarray:
    if stroke == 0:
        return glyphs
    op = ndimage.grey_dilation if stroke > 0 else ndimage.grey_erosion
    size = (1, 2 * abs(stroke) + 1, 2 * abs(stroke) + 1)
    footprint = np.zeros(size, bool)
    footprint[0] = _disk(abs(stroke))
    return op(glyphs, footprint=footprint)


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy**2 + xx**2 <= r * r + r


@functools.cache
def glyph_bank(face: str) -> dict[int, np.ndarray]:
    """{stroke: (10, GLYPH, GLYPH)} ink masks of one face."""
    base = _render_face(face)
    return {s: _restroke(base, s) for s in STROKES}


# ---------------------------------------------------------------------------------------------
# Geometry: place a glyph in a 32×32 image with a random affine map and elastic distortion
# ---------------------------------------------------------------------------------------------


def _place(glyph: np.ndarray, rng: np.random.Generator, height: float, rot_deg: float,
           shift: tuple[float, float] = (0.0, 0.0), shear: float = 0.0, elastic: float = 0.0,
           width: int = SIZE) -> np.ndarray:
    """Sample ``glyph`` into a (SIZE, width) mask: digit ``height`` px high, rotated by
    ``rot_deg``, sheared, centred at the image centre plus ``shift`` (dy, dx), with a smooth
    random displacement of about ``elastic`` px."""
    yy, xx = np.mgrid[0:SIZE, 0:width].astype(np.float32)
    yy -= (SIZE - 1) / 2 + shift[0]
    xx -= (width - 1) / 2 + shift[1]
    if elastic > 0:
        for grid in (yy, xx):
            field = ndimage.gaussian_filter(rng.standard_normal((SIZE, width)), 3.0, mode="wrap")
            grid += elastic * field / (field.std() + 1e-6)
    a = np.deg2rad(rot_deg)
    s = GLYPH_HEIGHT / height
    gy = s * (np.cos(a) * yy + np.sin(a) * xx)
    gx = s * (-np.sin(a) * yy + np.cos(a) * xx + shear * yy)
    c = (GLYPH - 1) / 2
    return ndimage.map_coordinates(glyph, [gy + c, gx + c], order=1, mode="constant", cval=0.0)


def _handwritten_mask(digit: int, rng: np.random.Generator) -> np.ndarray:
    """MNIST-like white-on-black digit mask."""
    face = SANS_FACES[rng.integers(len(SANS_FACES))]
    glyph = glyph_bank(face)[int(rng.choice(STROKES, p=[0.15, 0.35, 0.35, 0.15]))][digit]
    mask = _place(glyph, rng, height=rng.uniform(19, 24), rot_deg=rng.normal(0, 10),
                  shift=tuple(rng.normal(0, 1.0, 2)), shear=rng.normal(0, 0.15),
                  elastic=rng.uniform(0.4, 1.0))
    return np.clip(ndimage.gaussian_filter(mask, 0.5) * 1.2, 0, 1)


# ---------------------------------------------------------------------------------------------
# Colour helpers
# ---------------------------------------------------------------------------------------------


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _two_colours(rng: np.random.Generator, min_contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """(ink, background) RGB colours whose luma differs by at least ``min_contrast``."""
    while True:
        ink, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        if abs(_luma(ink) - _luma(bg)) >= min_contrast:
            return ink, bg


def _background(bg: np.ndarray, rng: np.random.Generator, gradient: bool, width: int = SIZE) -> np.ndarray:
    """(3, SIZE, width) solid colour, or a linear gradient from ``bg`` to a nearby colour."""
    out = np.broadcast_to(bg[:, None, None], (3, SIZE, width)).astype(np.float32)
    if not gradient:
        return out
    other = np.clip(bg + rng.normal(0, 0.35, 3), 0, 1)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:SIZE, 0:width] / max(SIZE, width)
    t = np.clip(0.5 + (np.cos(a) * xx + np.sin(a) * yy - 0.5), 0, 1)
    return out * (1 - t) + other[:, None, None] * t


def _compose(mask: np.ndarray, ink: np.ndarray, background: np.ndarray) -> np.ndarray:
    return background * (1 - mask) + ink[:, None, None] * mask


def _grey3(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask[None], 3, axis=0)


# ---------------------------------------------------------------------------------------------
# Domains: one image each
# ---------------------------------------------------------------------------------------------


def _mnist(digit: int, rng: np.random.Generator) -> np.ndarray:
    return _grey3(_handwritten_mask(digit, rng))


@functools.lru_cache(maxsize=1)
def _usps_pool() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def _usps(digit: int, rng: np.random.Generator) -> np.ndarray:
    images, targets = _usps_pool()
    img = images[rng.choice(np.flatnonzero(targets == digit))]
    big = np.clip(ndimage.zoom(img, SIZE / 8, order=3), 0, 1)
    big = ndimage.shift(ndimage.rotate(big, rng.normal(0, 5), reshape=False, order=1),
                        rng.normal(0, 0.7, 2), order=1)
    return _grey3(np.clip(ndimage.gaussian_filter(big, 0.7) * rng.uniform(1.0, 1.3), 0, 1))


def _syn(digit: int, rng: np.random.Generator) -> np.ndarray:
    face = ALL_FACES[rng.integers(len(ALL_FACES))]
    glyph = glyph_bank(face)[int(rng.choice((0, 1)))][digit]
    mask = _place(glyph, rng, height=rng.uniform(16, 26), rot_deg=rng.normal(0, 6),
                  shift=(rng.normal(0, 1.0), rng.normal(0, 2.0)))
    ink, bg = _two_colours(rng, 0.25)
    img = _compose(mask, ink, _background(bg, rng, gradient=rng.random() < 0.5))
    return ndimage.gaussian_filter(img, (0, *[rng.uniform(0.2, 0.9)] * 2))


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(np.asarray(img, np.float32) / 255.0 for img in load_sample_images().images)


def _mnistm(digit: int, rng: np.random.Generator) -> np.ndarray:
    photos = _photos()
    photo = photos[rng.integers(len(photos))]
    side = int(rng.integers(SIZE, 3 * SIZE))
    top = int(rng.integers(photo.shape[0] - side))
    left = int(rng.integers(photo.shape[1] - side))
    idx = np.linspace(0, side - 1, SIZE).round().astype(int)
    patch = photo[top + idx][:, left + idx].transpose(2, 0, 1)
    return np.abs(patch - _handwritten_mask(digit, rng)[None])


def _svhn(digit: int, rng: np.random.Generator) -> np.ndarray:
    face = ALL_FACES[rng.integers(8)]  # sans and serif faces, like house-number plates
    bank = glyph_bank(face)[int(rng.choice((0, 1)))]
    height = rng.uniform(18, 28)
    gap = height * rng.uniform(0.7, 0.9)
    mask = _place(bank[digit], rng, height, rng.normal(0, 5), shift=(rng.normal(0, 1), rng.normal(0, 1)))
    for side in (-1, 1):
        if rng.random() < 0.75:
            neighbour = bank[int(rng.integers(10))]
            mask = np.maximum(mask, _place(neighbour, rng, height, 0.0, shift=(0.0, side * gap)))
    ink, bg = _two_colours(rng, 0.15)
    img = _compose(mask, ink, _background(bg, rng, gradient=True))
    light = _background(np.full(3, rng.uniform(0.5, 1.0)), rng, gradient=True)
    img = img * light
    img = ndimage.gaussian_filter(img, (0, *[rng.uniform(0.5, 1.3)] * 2))
    img = img + rng.normal(0, rng.uniform(0.01, 0.05), img.shape)
    mean = img.mean()
    return np.clip(mean + (img - mean) * rng.uniform(0.5, 1.0), 0, 1)


GENERATORS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "mnist": _mnist, "mnistm": _mnistm, "usps": _usps, "syn": _syn, "svhn": _svhn,
}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def make_digit5_synth(domain: str, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` images of every digit of one synthetic domain, shuffled: x of shape
    (10·n, 3, 32, 32) float32 in [0, 1] and y int64; the same (domain, n, seed) always gives
    the same arrays."""
    if domain not in GENERATORS:
        raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, not {n_per_class}")
    rng = np.random.default_rng([seed, DOMAINS.index(domain), SYNTH_VERSION])
    y = rng.permutation(np.repeat(np.arange(10, dtype=np.int64), n_per_class))
    make = GENERATORS[domain]
    x = np.stack([make(int(d), rng) for d in y]).astype(np.float32)
    return np.clip(x, 0.0, 1.0), y


def cache_path(domain: str, n_per_class: int, seed: int,
               cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """File that :func:`cached_digit5_synth` uses for these arguments."""
    base = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    return base / f"{domain}-n{n_per_class}-seed{seed}-v{SYNTH_VERSION}.npz"


def cached_digit5_synth(domain: str, n_per_class: int, seed: int,
                        cache_dir: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_digit5_synth`, stored once as a compressed ``.npz`` under ``cache_dir``
    (default ``~/.cache/fedsim/digit5-synth``) and read back afterwards. A cache file that
    cannot be read is regenerated; writes are atomic (temporary file, then ``os.replace``)."""
    path = cache_path(domain, n_per_class, seed, cache_dir)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return f["x"], f["y"]
        except (OSError, ValueError, KeyError):
            pass  # corrupt or foreign file: regenerate below
    x, y = make_digit5_synth(domain, n_per_class, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, x=x, y=y)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return x, y


def save_samples_png(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Grid of samples, one row per domain and one column per digit, saved as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(DOMAINS), 10)
    for r, domain in enumerate(DOMAINS):
        x, y = make_digit5_synth(domain, 1, seed)
        for d in range(10):
            ax = axes[r, d]
            ax.imshow(x[np.flatnonzero(y == d)[0]].transpose(1, 2, 0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if d == 0:
                ax.set_ylabel(domain)
            if r == 0:
                ax.set_title(str(d))
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def _standardize(x: np.ndarray):
    """Tensor of ``x`` with each image shifted/scaled to zero mean and unit variance."""
    import torch

    t = torch.from_numpy(x)
    return (t - t.mean((1, 2, 3), keepdim=True)) / (t.std((1, 2, 3), keepdim=True) + 1e-3)


def _train_small_cnn(x: np.ndarray, y: np.ndarray, seed: int, epochs: int):
    """LeNet-style CNN (two 5×5 convolutions) trained with Adam on standardized images."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = _standardize(x), torch.from_numpy(y)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=order).split(50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def cross_domain_gap(n_per_class: int = 100, seed: int = 0, epochs: int = 15) -> dict[str, dict[str, float]]:
    """Accuracy of a small CNN trained on each domain (samples from ``seed``) and tested on every
    domain (fresh samples from ``seed + 1``): ``{train_domain: {test_domain: accuracy}}``.
    "usps" samples of both seeds come from the same 1,797 scikit-learn images, so its diagonal
    is optimistic. Uses torch on one thread (small convolutions; avoids oversubscription)."""
    import torch

    train = {d: make_digit5_synth(d, n_per_class, seed) for d in DOMAINS}
    test = {d: make_digit5_synth(d, n_per_class, seed + 1) for d in DOMAINS}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result: dict[str, dict[str, float]] = {}
        for src in DOMAINS:
            model = _train_small_cnn(*train[src], seed=seed, epochs=epochs)
            with torch.no_grad():
                result[src] = {
                    dst: float((model(_standardize(x)).argmax(1).numpy() == y).mean())
                    for dst, (x, y) in test.items()
                }
    finally:
        torch.set_num_threads(threads)
    return result
