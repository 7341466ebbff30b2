"""Regression tests for banks attacked as a careless or hostile user would: concurrent writers,
headers of the wrong JSON shape, FIFOs, stored configurations with extra keys, appends to image
banks, and the modes of created files."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import assocmem
from assocmem import CorruptBankError, ModernHopfield, TwoLayerNetwork
from assocmem.bank import MemoryBank, _digest, _manifest_digest
from assocmem.lagrangians import LogSumExp, Quadratic

SRC = str(Path(assocmem.__file__).resolve().parents[1])


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


# -- two processes appending to one bank -------------------------------------------------------------
_APPENDER = """
import sys, torch
from assocmem.bank import MemoryBank
path, value, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
bank = MemoryBank(path)          # opened once, before the other writer's appends
for i in range(n):
    bank.append(torch.full((1, 4), value))
print("ok")
"""


@pytest.mark.parametrize("layout", ["file", "dir"])
def test_concurrent_appends_from_two_processes_keep_every_row(tmp_path, layout):
    path = tmp_path / ("b.safetensors" if layout == "file" else "b")
    ModernHopfield(torch.zeros(1, 4), beta=2.0).save(path)
    script = tmp_path / "append.py"
    script.write_text(_APPENDER)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    n = 40
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(v), str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in (1.0, 2.0)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    xi = assocmem.load(path).xi
    assert xi.shape == (1 + 2 * n, 4)
    assert int((xi[:, 0] == 1.0).sum()) == n and int((xi[:, 0] == 2.0).sum()) == n


def test_stale_handle_does_not_write_its_old_config_over_a_resave(tmp_path):
    path = tmp_path / "b.safetensors"
    ModernHopfield(torch.zeros(2, 3), beta=1.0).save(path)
    stale = MemoryBank(path)
    ModernHopfield(torch.ones(5, 3), beta=7.0).save(path)  # another writer re-saves the bank
    stale.append(torch.full((1, 3), 2.0))
    m = assocmem.load(path)
    assert m.beta == 7.0 and m.xi.shape == (6, 3)
    assert torch.equal(m.xi[:5], torch.ones(5, 3))


def test_readers_never_see_a_false_corruption_while_a_writer_replaces_the_bank(tmp_path):
    path = tmp_path / "b.safetensors"
    ModernHopfield(torch.zeros(64, 32), beta=1.0).save(path)
    stop, errors = threading.Event(), []

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            ModernHopfield(torch.full((64 + i % 7, 32), float(i)), beta=1.0).save(path)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(150):
            try:
                m = assocmem.load(path)
                assert bool((m.xi == m.xi[0, 0]).all())  # one writer's state, never a mixture
            except CorruptBankError as e:
                errors.append(str(e))
    finally:
        stop.set()
        t.join()
    assert errors == []


# -- headers of the wrong shape ----------------------------------------------------------------------
def _file_bank_with_header(path: Path, header_text: str) -> None:
    from safetensors.torch import save_file

    tensors = {"xi": torch.randn(4, 3)}
    save_file(tensors, str(path), metadata={"assocmem_bank": header_text, "sha256": _digest(tensors, header_text)})


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"bank"', "null", "[" * 50_000 + "]" * 50_000,
                                  '{"format": "assocmem-bank", "format_version": NaN}'])
def test_bank_header_of_the_wrong_json_shape_is_corrupt(tmp_path, text):
    path = tmp_path / "b.safetensors"
    _file_bank_with_header(path, text)
    with pytest.raises(CorruptBankError, match=str(path)):
        assocmem.load(path)


def test_safetensors_header_that_is_not_an_object_is_corrupt(tmp_path):
    path = tmp_path / "b.safetensors"
    body = b"[1,2,3]"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(CorruptBankError, match="not an object"):
        assocmem.load(path)


def _rewrite_manifest(path: Path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    m.pop("manifest_sha256", None)
    m["manifest_sha256"] = _manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("text", ["[1]", "3", "null", "{" * 1 + '"a":' * 0 + "[" * 50_000 + "]" * 50_000 + "}"])
def test_manifest_of_the_wrong_json_shape_is_corrupt(tmp_path, text):
    path = tmp_path / "b"
    ModernHopfield(torch.randn(3, 2)).save(path)
    (path / "manifest.json").write_text(text)
    with pytest.raises(CorruptBankError, match="manifest"):
        assocmem.load(path)


def test_nan_in_a_manifest_and_a_manifest_directory_are_corrupt(tmp_path):
    path = tmp_path / "b"
    ModernHopfield(torch.randn(3, 2), beta=2.0).save(path)
    text = (path / "manifest.json").read_text().replace('"beta": 2.0', '"beta": NaN')
    assert "NaN" in text
    (path / "manifest.json").write_text(text)
    with pytest.raises(CorruptBankError, match="NaN"):
        assocmem.load(path)
    (path / "manifest.json").unlink()
    (path / "manifest.json").mkdir()
    with pytest.raises(CorruptBankError, match="directory"):
        assocmem.load(path)


@pytest.mark.parametrize("extra", [{"device": "meta"}, {"dtype": "float64"}])
def test_unexpected_keys_in_a_stored_config_are_corrupt_not_kwargs(tmp_path, extra):
    path = tmp_path / "b"
    TwoLayerNetwork(torch.randn(3, 2), Quadratic(), LogSumExp()).save(path)
    _rewrite_manifest(path, lambda m: m["config"].update(extra))
    with pytest.raises(CorruptBankError, match="unexpected keys"):
        assocmem.load(path)


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    fifo = tmp_path / "bank.safetensors"
    os.mkfifo(fifo)
    r = _run(f"""
        import assocmem
        try:
            assocmem.load({str(fifo)!r})
        except assocmem.CorruptBankError as e:
            print("refused:", e)
    """, timeout=60)
    assert "refused" in r.stdout and "not a regular file" in r.stdout, r.stderr
    with pytest.raises(ValueError, match="not an assocmem bank"):
        ModernHopfield(torch.randn(2, 2)).save(fifo)
    seg_dir = tmp_path / "d"
    ModernHopfield(torch.randn(2, 2)).save(seg_dir)
    seg = next(p for p in seg_dir.iterdir() if p.name.startswith("seg-"))
    seg.unlink()
    os.mkfifo(seg)
    r = _run(f"""
        import assocmem
        try:
            assocmem.load({str(seg_dir)!r})
        except assocmem.CorruptBankError as e:
            print("refused:", e)
    """, timeout=60)
    assert "refused" in r.stdout, r.stderr


# -- appending to image banks ------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["file", "dir"])
def test_image_banks_written_by_store_can_be_appended_to(tmp_path, layout):
    from assocmem.data import ImageMemory

    path = tmp_path / ("img.safetensors" if layout == "file" else "img")
    xi = torch.randint(0, 2, (3, 4), generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    ImageMemory(xi, height=2, width=2, names=["a", "b", "image 3"]).save(path)
    bank = MemoryBank(path).append(torch.ones(2, 4))
    bank.append(-torch.ones(1, 4), names=["z"])
    m = assocmem.load(path)
    assert m.xi.shape == (6, 4)
    assert m.names[:3] == ["a", "b", "image 3"] and m.names[5] == "z"
    assert len(set(m.names)) == 6  # generated names do not collide with stored ones
    with pytest.raises(ValueError, match="names"):
        bank.append(torch.ones(1, 4), names=["x", "y"])
    with pytest.raises(ValueError, match="binary_pixels"):
        bank.append(torch.full((1, 4), 0.5))
    assert assocmem.load(path).xi.shape == (6, 4)


def test_append_keyword_arguments_are_refused_where_the_class_takes_none(tmp_path):
    path = tmp_path / "b"
    ModernHopfield(torch.randn(3, 2)).save(path)
    with pytest.raises(TypeError, match="keyword"):
        MemoryBank(path).append(torch.randn(1, 2), names=["x"])


# -- modes of created files --------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_banks_and_reports_get_the_modes_open_and_mkdir_would_give(tmp_path, umask):
    r = _run(f"""
        import os, stat, torch
        from pathlib import Path
        os.umask({umask})
        from assocmem import ModernHopfield
        from assocmem.report import write_report_folder
        d = Path({str(tmp_path)!r})
        ModernHopfield(torch.randn(3, 2)).save(d / "f.safetensors")
        b = ModernHopfield(torch.randn(3, 2)).save(d / "dirbank")
        b.append(torch.randn(1, 2))
        write_report_folder(d / "report", {{"a.txt": b"x"}})
        for p in [d / "f.safetensors", d / "dirbank", d / "report", d / "report" / "a.txt",
                  *(d / "dirbank").iterdir()]:
            print(p.name, oct(stat.S_IMODE(p.stat().st_mode)), p.is_dir())
    """)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.split("\n"):
        if not line:
            continue
        name, mode, is_dir = line.split()
        want = (0o777 if is_dir == "True" else 0o666) & ~umask
        assert int(mode, 8) == want, line
