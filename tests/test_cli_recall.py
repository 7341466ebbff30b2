"""`assocmem store` and `assocmem recall`: a folder of PNGs becomes a memory bank, a damaged PNG comes
back completed, and bad input gives one line on stderr, exit code 2 and no output file."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from assocmem.cli import main

H, W = 16, 20


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.one_thread)


def _save(path, pattern):
    """+-1 pattern -> black/white PNG (+1 white)."""
    Image.fromarray(np.where(pattern.reshape(H, W) > 0, 255, 0).astype(np.uint8), mode="L").save(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(2024)  # not the recall's seed 0, whose random fill it would repeat
    xi = torch.where(torch.rand(12, H * W, generator=g) < 0.5, 1.0, -1.0)
    for i, p in enumerate(xi):
        _save(d / f"img{i:02d}.png", p.numpy())
    return d, xi


@pytest.fixture(scope="module")
def bank(images, tmp_path_factory):
    d, _ = images
    f = tmp_path_factory.mktemp("bank") / "bank.safetensors"
    assert main(["store", str(d), "--out", str(f)]) == 0
    return f


def _damaged(tmp_path, pattern, flip=0.1, hide_rows=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    p = pattern.clone()
    m = torch.rand(p.shape, generator=g) < flip
    p[m] = -p[m]
    grey = np.where(p.reshape(H, W).numpy() > 0, 255, 0).astype(np.uint8)
    alpha = np.full((H, W), 255, dtype=np.uint8)
    alpha[H - hide_rows:] = 0  # transparent = unknown
    path = tmp_path / "cue.png"
    Image.fromarray(np.stack([grey, grey, grey, alpha], -1), mode="RGBA").save(path)
    return path


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def test_store_writes_a_loadable_image_bank(bank, images, capsys):
    import assocmem.data

    _, xi = images
    m = assocmem.load(bank)
    assert isinstance(m, assocmem.data.ImageMemory)
    assert m.image_shape == (H, W) and m.names == [f"img{i:02d}.png" for i in range(12)]
    assert torch.equal(m.xi, xi)


@pytest.mark.parametrize("model", ["modern", "dense-exp", "dense-power", "classical", "spherical"])
def test_recall_round_trips_a_png(bank, images, tmp_path, model, capsys):
    _, xi = images
    cue = _damaged(tmp_path, xi[5], flip=0.1, hide_rows=4)
    out = tmp_path / "result.png"
    assert main(["recall", "--memory", str(bank), "--cue", str(cue), "--model", model, "--out", str(out)]) == 0
    got = _read(out)
    assert got.shape == (H, W)
    assert np.array_equal(got, np.where(xi[5].reshape(H, W).numpy() > 0, 255, 0))
    assert "nearest stored image: img05.png (0.00 % of pixels differ)" in capsys.readouterr().out


def test_grey_bank_round_trip_and_binary_models_refused(images, tmp_path, capsys):
    d, xi = images
    f = tmp_path / "grey.safetensors"
    assert main(["store", str(d), "--out", str(f), "--gray", "--size", "10x8"]) == 0
    cue = tmp_path / "small.png"
    Image.open(d / "img03.png").resize((10, 8), Image.LANCZOS).save(cue)
    out = tmp_path / "r.png"
    assert main(["recall", "--memory", str(f), "--cue", str(cue), "--out", str(out), "--beta", "4"]) == 0
    assert _read(out).shape == (8, 10) and "img03.png" in capsys.readouterr().out
    assert main(["recall", "--memory", str(f), "--cue", str(cue), "--out", str(tmp_path / "s.png"), "--model", "classical"]) == 2
    assert "grey levels" in capsys.readouterr().err and not (tmp_path / "s.png").exists()


def _fails(argv, capsys, *gone, match=""):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"assocmem {argv[0]}: error:") and match in err[0], err
    for p in gone:
        assert not p.exists(), p


def test_recall_bad_input(bank, images, tmp_path, capsys):
    d, xi = images
    out = tmp_path / "out.png"
    good = _damaged(tmp_path, xi[0])
    txt = tmp_path / "notes.txt"
    txt.write_text("not a picture")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    big = tmp_path / "big.png"
    Image.new("L", (W + 1, H)).save(big)
    _fails(["recall", "--memory", str(bank), "--cue", str(tmp_path / "missing.png"), "--out", str(out)], capsys, out, match="no such file")
    _fails(["recall", "--memory", str(bank), "--cue", str(txt), "--out", str(out)], capsys, out, match="could not read")
    _fails(["recall", "--memory", str(bank), "--cue", str(fake), "--out", str(out)], capsys, out, match="could not read")
    _fails(["recall", "--memory", str(bank), "--cue", str(big), "--out", str(out)], capsys, out, match=f"expected {W}x{H}")
    _fails(["recall", "--memory", str(tmp_path / "none.safetensors"), "--cue", str(good), "--out", str(out)], capsys, out)
    _fails(["recall", "--memory", str(txt), "--cue", str(good), "--out", str(out)], capsys, out)
    _fails(["recall", "--memory", str(bank), "--cue", str(good), "--out", str(tmp_path / "out.jpg")], capsys, match=".png")
    _fails(["recall", "--memory", str(bank), "--cue", str(good), "--out", str(tmp_path / "no" / "out.png")], capsys, match="does not exist")
    _fails(["recall", "--memory", str(bank), "--cue", str(good), "--out", str(out), "--beta", "-1"], capsys, out, match="--beta")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cue.png", "notes.txt", "fake.png", "big.png"])


def test_store_bad_input(images, tmp_path, capsys):
    d, xi = images
    out = tmp_path / "b.safetensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(["store", str(empty), "--out", str(out)], capsys, out, match="no files")
    _fails(["store", str(tmp_path / "nope"), "--out", str(out)], capsys, out, match="no such folder")
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "a.txt").write_text("x")
    _fails(["store", str(only_text), "--out", str(out)], capsys, out, match="not images")
    broken = tmp_path / "broken"
    broken.mkdir()
    _save(broken / "a.png", xi[0].numpy())
    (broken / "b.png").write_bytes(b"not a png at all")
    _fails(["store", str(broken), "--out", str(out)], capsys, out, match="b.png")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _save(mixed / "a.png", xi[0].numpy())
    Image.new("L", (5, 5)).save(mixed / "b.png")
    _fails(["store", str(mixed), "--out", str(out)], capsys, out, match="one size")
    _fails(["store", str(mixed), "--out", str(out), "--size", "5by5"], capsys, out, match="--size")
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    _fails(["store", str(d), "--out", str(keep)], capsys, match="not an assocmem bank")
    assert keep.read_text() == "precious"
    assert not list(tmp_path.glob(".tmp-*"))


def test_store_skips_files_that_are_not_images(images, tmp_path, capsys):
    d, xi = images
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        _save(src / f"{i}.png", xi[i].numpy())
    (src / "README.txt").write_text("about these images")
    assert main(["store", str(src), "--out", str(tmp_path / "b.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "stored 3 images of 20x16 pixels" in out and "skipped 1 file(s) without an image suffix: README.txt" in out


def test_real_entry_point_exits_2_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "assocmem.cli", "recall", "--memory", str(tmp_path / "x"), "--cue",
                        str(tmp_path / "c.png"), "--out", str(tmp_path / "o.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("model", ["modern", "dense-exp", "classical", "spherical"])
def test_recall_with_clamped_known_pixels(bank, images, tmp_path, model, capsys):
    """Half the picture transparent, the rest exact: --clamp holds the known half, the rest is completed."""
    _, xi = images
    cue = _damaged(tmp_path, xi[7], flip=0.0, hide_rows=H // 2)
    out = tmp_path / "r.png"
    assert main(["recall", "--memory", str(bank), "--cue", str(cue), "--model", model, "--clamp", "--out", str(out)]) == 0
    assert np.array_equal(_read(out), np.where(xi[7].reshape(H, W).numpy() > 0, 255, 0))
