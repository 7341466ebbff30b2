"""The command line's shared argument checks (assocmem.commands._args and the machine checks of
assocmem._validation): thread counts bounded by the cores, sizes by the available memory, seeds by
the range torch accepts, devices by what torch reports; each refusal is one line on stderr, exit
code 2, before any work or output."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from assocmem import _validation as V
from assocmem.cli import build_parser, main
from assocmem.commands import _args as A

pytestmark = pytest.mark.usefixtures("one_thread")


def _refused(capsys, argv, *words, gone=()):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"assocmem {argv[0]}: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    for p in gone:
        assert not os.path.exists(p), p
    return lines[0]


def _capacity(tmp_path, *extra):
    return ["capacity", "--model", "classical", "--N", "8", "--trials", "1", "--out", str(tmp_path / "cap"), *extra]


def test_threads_beyond_the_cores_refused_in_a_fresh_process(tmp_path):
    """--threads 100000 reached torch.set_num_threads and crashed the interpreter (exit 139)."""
    r = subprocess.run([sys.executable, "-m", "assocmem.cli", *_capacity(tmp_path, "--threads", "100000")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--threads" in lines[0] and f"[1, {V.available_cores()}]" in lines[0]
    assert not (tmp_path / "cap").exists()


def test_threads_bound_is_the_process_affinity(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert V.available_cores() == 1
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    _refused(capsys, _capacity(tmp_path, "--threads", "2"), "--threads", "[1, 1]", gone=[tmp_path / "cap"])
    _refused(capsys, _capacity(tmp_path, "--threads", "0"), "--threads")
    assert calls == []  # refused before anything touched torch's thread pool


def test_huge_N_refused_by_the_memory_estimate(tmp_path, capsys):
    line = _refused(capsys, ["capacity", "--model", "classical", "--N", "99999999999", "--trials", "1",
                             "--out", str(tmp_path / "cap")], "--N", "memory available", gone=[tmp_path / "cap"])
    assert "N = 99999999999" in line
    for model in ("modern", "dense", "threshold"):  # the cue tensors alone are too large
        _refused(capsys, ["capacity", "--model", model, "--N", "8,99999999999", "--out", str(tmp_path / "cap")],
                 "--N", gone=[tmp_path / "cap"])


def test_memory_rule_uses_the_available_memory(monkeypatch, tmp_path, capsys):
    """The same sizes pass or fail with what the machine has: the estimate is compared with
    available_memory(), not with a constant."""
    from assocmem import capacity as cap
    from assocmem.commands.capacity import fixed_bytes

    spec = cap.capacity_settings("classical", "stability", trials=2)
    need = fixed_bytes(spec, 300)
    assert need == 2 * 100 * 300 * 5 + 2 * 300 * 300 * 8
    monkeypatch.setattr(V, "available_memory", lambda: need - 1)
    _refused(capsys, ["capacity", "--model", "classical", "--N", "300", "--trials", "2", "--out", str(tmp_path / "c")],
             "--N", gone=[tmp_path / "c"])
    monkeypatch.setattr(V, "available_memory", lambda: None)  # unknown: no refusal
    assert main(["capacity", "--model", "classical", "--N", "8", "--trials", "1", "--k-max", "4",
                 "--out", str(tmp_path / "c2"), "--json"]) == 0


def test_available_memory_reads_meminfo_and_cgroup(monkeypatch, tmp_path):
    files = {"/proc/meminfo": "MemTotal: 1000 kB\nMemAvailable:     500 kB\n",
             "/sys/fs/cgroup/memory.max": "300000\n", "/sys/fs/cgroup/memory.current": "100000\n"}
    real_open = open

    def fake_open(path, *a, **k):
        if path in files:
            p = tmp_path / str(abs(hash(path)))
            p.write_text(files[path])
            return real_open(p, *a, **k)
        if str(path).startswith("/sys/fs/cgroup"):
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    import builtins

    monkeypatch.setattr(builtins, "open", fake_open)
    assert V.available_memory() == 200000  # the cgroup's remaining 200,000 bytes < MemAvailable's 512,000
    files["/sys/fs/cgroup/memory.max"] = "max\n"
    assert V.available_memory() == 500 * 1024
    with pytest.raises(ValueError, match=r"--size: .* needs about .* more than the 0\.5 MiB"):
        V.check_memory("--size", 10**6, "storing 1 image")


def test_store_size_refused_before_reading_images(tmp_path, capsys):
    from assocmem.data import write_png

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(2):
        write_png(d / f"{i}.png", (torch.rand(6, 5) * 255).to(torch.uint8).numpy())
    out = tmp_path / "bank.safetensors"
    _refused(capsys, ["store", str(d), "--out", str(out), "--size", "100000x100000"], "--size", "2 image(s)",
             "memory available", gone=[out])
    _refused(capsys, ["store", str(d), "--out", str(out), "--size", "0x5"], "--size", "WIDTHxHEIGHT", gone=[out])
    assert main(["store", str(d), "--out", str(out), "--size", "4x3"]) == 0 and out.exists()


@pytest.mark.parametrize("cmd", ["capacity", "recall", "demo"])
def test_seed_out_of_torch_range_names_the_argument(cmd, tmp_path, capsys):
    big = "99999999999999999999999"
    if cmd == "capacity":
        argv = _capacity(tmp_path, "--seed", big)
    elif cmd == "recall":
        argv = ["recall", "--memory", str(tmp_path / "m"), "--cue", str(tmp_path / "c.png"), "--out",
                str(tmp_path / "o.png"), "--seed", big]
    else:
        argv = ["demo", "--quick", "--no-progress", "--out", str(tmp_path / "rep"), "--seed", big]
    _refused(capsys, argv, "--seed", "expected an integer in [0,", gone=[tmp_path / "cap", tmp_path / "rep"])
    _refused(capsys, argv[:-1] + ["-1"], "--seed")


def test_demo_seed_bound_leaves_room_for_derived_seeds(tmp_path, capsys):
    """The examples seed each run with seed * 1000 + i; the largest seed the demo takes keeps that
    within torch's range, the next one is refused up front (it failed after the run had started)."""
    from assocmem.commands.demo import SEED_MAX

    assert SEED_MAX * 1000 + 999 <= V.SEED_MAX < (SEED_MAX + 1) * 1000 + 999
    torch.Generator().manual_seed(SEED_MAX * 1000 + 999)
    _refused(capsys, ["demo", "--quick", "--no-progress", "--out", str(tmp_path / "r"), "--seed", str(SEED_MAX + 1)],
             "--seed", gone=[tmp_path / "r"])


def test_devices_checked_against_what_torch_reports(tmp_path, capsys):
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    _refused(capsys, _capacity(tmp_path, "--device", missing), "--device", "not available", gone=[tmp_path / "cap"])
    _refused(capsys, _capacity(tmp_path, "--device", "meta"), "--device", "meta", "no data", gone=[tmp_path / "cap"])
    _refused(capsys, _capacity(tmp_path, "--device", "gpu0"), "--device", "expected a torch device")
    assert main(_capacity(tmp_path, "--device", "cpu", "--k-max", "4", "--json")) == 0
    capsys.readouterr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_available_cuda_device_accepted():
    assert A.device()("cuda") == "cuda"
    assert A.device()("cuda:0") == "cuda:0"
    assert "cuda:0" in V.available_devices()


def test_check_device_library_form():
    assert V.check_device("device", "cpu") == torch.device("cpu")
    assert V.check_device("device", torch.device("meta"), compute=False).type == "meta"
    with pytest.raises(ValueError, match="device: got 'meta'"):
        V.check_device("device", "meta")
    with pytest.raises(TypeError, match="device: got list"):
        V.check_device("device", ["cpu"])


def test_type_callables_word_their_errors():
    cases = [(A.integer(minimum=1), "0", "expected an integer >= 1"), (A.integer(), "2.5", "expected an integer"),
             (A.real(), "nan", "finite"), (A.real(), "1e309", "finite"), (A.positive(), "0", "a number > 0"),
             (A.fraction(), "1.5", "[0, 1]"), (A.fraction(lo_open=True), "0", "(0, 1]"),
             (A.choice(("a", "b")), "c", "expected one of 'a', 'b'"), (A.int_list(2), "8,x", "'x' in '8,x'"),
             (A.int_list(2), "", "comma-separated"), (A.choices_list(("x", "y")), "x,z", "'z'"),
             (A.image_size(), "4x4x4", "WIDTHxHEIGHT"), (A.seed(), str(2**64), "18446744073709551615")]
    for parse, text, words in cases:
        with pytest.raises(argparse.ArgumentTypeError) as e:
            parse(text)
        assert words in str(e.value) and not str(e.value).startswith("\0"), (text, str(e.value))
    assert A.int_list(2)("8, 16") == [8, 16] and A.choices_list(("x", "y"))("y,x,y") == ["y", "x"]
    assert A.seed()(str(2**64 - 1)) == 2**64 - 1 and A.image_size()("28x14") == (28, 14)


def test_every_option_of_the_commands_is_checked_where_it_is_parsed():
    """No option of capacity, recall, store or demo takes a bare int/float (which let 'nan', 'inf',
    huge or negative values through to the library) or argparse's own choices= (a different
    wording): each uses a callable of assocmem.commands._args."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("capacity", "recall", "store", "demo"):
        for action in sub.choices[name]._actions:
            if action.type is not None:
                assert action.type not in (int, float, str), (name, action.dest)
                assert action.type.__module__ == A.__name__, (name, action.dest)
            assert action.choices is None, (name, action.dest)


def test_unknown_options_and_missing_arguments_are_one_line(capsys):
    _refused(capsys, ["recall", "--memory", "x"], "required")
    _refused(capsys, ["store", "d", "--out", "b", "--bogus"], "unrecognized")
