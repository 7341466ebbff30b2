"""Persistent memory banks: every model saved as safetensors plus a small JSON header, written
atomically, verified by SHA-256 on load, and appendable without a full rewrite (directory layout).

The on-disk format (version 1) is described in ``docs/reliability.md``. No equations here: a bank
stores the patterns ``xi`` (KH eq. 1) and the parameters (Lagrangians, beta, n, tau_f, tau_h, ...).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ._io import (
    TMP_PREFIX,
    atomic_directory,
    atomic_replace,
    atomic_write_bytes,
    file_lock,
    fsync_dir,
    require_regular_file,
    remove_stale_temporaries,
    tmp_prefix,
)
from ._validation import BankVersionError, CorruptBankError, check_tensor, describe
from ._version import __version__

__all__ = [
    "FORMAT_VERSION",
    "MemoryBank",
    "save",
    "load",
    "open_bank",
    "register",
    "atomic_write_bytes",
    "atomic_replace",
]

FORMAT_VERSION = 1
_FORMAT = "assocmem-bank"
_META_KEY = "assocmem_bank"
_MANIFEST = "manifest.json"
_SEGMENT_RE = re.compile(r"^seg-(\d{6})-([0-9a-f]{8})\.safetensors$")
_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


# ---------------------------------------------------------------------------------------------------
# Atomic file operations: temp file in the same directory, fsync, os.replace, fsync the directory
# ---------------------------------------------------------------------------------------------------
# atomic writes, locks and creation modes live in assocmem._io; re-exported here (public names)
_fsync_dir = fsync_dir
_TMP_PREFIX = TMP_PREFIX
_tmp_prefix = tmp_prefix


# ---------------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------------
def _digest(tensors: dict[str, torch.Tensor], header: str = "") -> str:
    """SHA-256 over the header text and every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    h.update(b"assocmem-bank-v1\0")
    h.update(header.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{_dtype_name(t.dtype)}\0{list(t.shape)}\0".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------------------------------
# Registry: class name -> how to turn a model into (JSON config, tensors) and back
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Codec:
    cls: type
    to_bank: Callable[[Any], tuple[dict, dict[str, torch.Tensor]]]
    from_bank: Callable[[dict, dict[str, torch.Tensor]], Any]
    patterns_key: str = "xi"


_REGISTRY: dict[str, _Codec] = {}


def register(cls: type, to_bank=None, from_bank=None, patterns_key: str = "xi") -> type:
    """Make ``cls`` storable. ``to_bank(obj) -> (config, tensors)`` gives a JSON-serialisable dict
    and a dict of tensors (the appendable pattern matrix under ``patterns_key``, one pattern per
    row); ``from_bank(config, tensors) -> obj`` rebuilds it. By default the class's own
    ``_bank_config(self)`` and ``_from_bank(cls, config, tensors)`` are used; subclasses of
    :class:`Storable` defining those two methods are registered when they are defined."""
    to_bank = to_bank or getattr(cls, "_bank_config", None)
    from_bank = from_bank or getattr(cls, "_from_bank", None)
    if to_bank is None or from_bank is None:
        raise TypeError(f"cls: {cls.__name__} defines no _bank_config/_from_bank; pass to_bank and from_bank")
    _REGISTRY[cls.__name__] = _Codec(cls, to_bank, from_bank, getattr(cls, "_bank_patterns_key", patterns_key))
    return cls


class Storable:
    """Mixin of every class that can be written as a memory bank.

    A subclass says what it stores: ``_bank_config(self) -> (config, tensors)`` (a JSON-serialisable
    dict and a dict of tensors, the appendable pattern matrix under ``_bank_patterns_key``, one
    pattern per row) and the classmethod ``_from_bank(cls, config, tensors)`` that rebuilds it.
    Optionally ``_bank_extend(cls, config, n_old, n_new, **kwargs) -> config`` says how the stored
    configuration changes when ``n_new`` patterns are appended (e.g. names of appended images), and
    ``_bank_slice(cls, config, start, stop)`` gives the configuration of some rows alone.
    Subclasses are registered by class name when defined, so this module never imports them; it
    gives them :meth:`save`."""

    _bank_patterns_key = "xi"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if ("<locals>" not in cls.__qualname__ and callable(getattr(cls, "_bank_config", None))
                and callable(getattr(cls, "_from_bank", None)) and cls.__name__ not in _REGISTRY):
            register(cls)

    @classmethod
    def _bank_extend(cls, config: dict, n_old: int, n_new: int, **kwargs) -> dict:
        """The stored configuration after ``n_new`` patterns are appended to ``n_old``."""
        if kwargs:
            raise TypeError(f"append: {cls.__name__} banks take no keyword arguments; got {sorted(kwargs)}")
        return config

    @classmethod
    def _bank_slice(cls, config: dict, start: int, stop: int) -> dict:
        """The configuration of the stored patterns ``start:stop`` alone (appended rows are checked
        by the class's constructor with it)."""
        return config

    def save(self, path, *, layout: str = "auto") -> "MemoryBank":
        """Write this model as a memory bank (atomic, checksummed); ``assocmem.load(path)`` reads it
        back. Returns the :class:`~assocmem.bank.MemoryBank` (``.append(patterns)`` adds patterns).
        ``layout``: "file" (one safetensors file), "dir" (a directory of segments, cheap appends) or
        "auto" (a file for paths ending in ``.safetensors``, a directory otherwise)."""
        return save(self, path, layout=layout)


def _codec_for_object(obj) -> _Codec:
    c = _REGISTRY.get(type(obj).__name__)
    if c is not None and c.cls is type(obj):
        return c
    if callable(getattr(type(obj), "_bank_config", None)) and callable(getattr(type(obj), "_from_bank", None)):
        return _Codec(type(obj), type(obj)._bank_config, type(obj)._from_bank,
                      getattr(type(obj), "_bank_patterns_key", "xi"))
    raise TypeError(
        f"model: got {describe(obj)}; expected one of the storable classes {sorted(_REGISTRY)} "
        "(or a class defining _bank_config and _from_bank)"
    )


def _codec_for_name(name: str, module, path: Path) -> _Codec:
    c = _REGISTRY.get(name)
    if isinstance(module, str) and (module == "assocmem" or module.startswith("assocmem.")):
        # the class's own module (or the package that re-exports it), imported by name on demand
        if c is None or not (c.cls.__module__ == module or module.startswith(c.cls.__module__ + ".")
                             or c.cls.__module__.startswith(module + ".")):
            try:
                cls = getattr(importlib.import_module(module), name, None)
            except ImportError:
                cls = None
            if isinstance(cls, type) and callable(getattr(cls, "_from_bank", None)) and callable(getattr(cls, "_bank_config", None)):
                c = _REGISTRY[name] if _REGISTRY.get(name, None) is not None and _REGISTRY[name].cls is cls else \
                    _Codec(cls, cls._bank_config, cls._from_bank, getattr(cls, "_bank_patterns_key", "xi"))
    if c is not None:
        return c
    raise CorruptBankError(
        f"{path}: stores a model of class {name!r} (module {module!r}) that this assocmem cannot rebuild; "
        f"known classes: {sorted(_REGISTRY)}"
    )


# -- helpers for the classes' _bank_config / _from_bank --------------------------------------------
def encode_scalar(key: str, value, tensors: dict) -> Any:
    """A parameter that may be a float or a tensor (learnable): tensors go into ``tensors[key]`` and
    the config refers to them; numbers stay numbers."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach()
        return {"tensor": key, "parameter": isinstance(value, nn.Parameter)}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    return float(value)


def decode_scalar(value, tensors: dict):
    """Inverse of :func:`encode_scalar`."""
    if isinstance(value, dict) and "tensor" in value:
        t = tensors[value["tensor"]]
        return nn.Parameter(t.clone()) if value.get("parameter") else t
    return value


def check_config(config, keys, optional=()) -> dict:
    """The stored configuration of a class, checked: a dict holding every key of ``keys`` and
    nothing outside ``keys`` and ``optional`` (a stored key is never passed on blindly, e.g. as
    ``**kwargs``). Raises ValueError, which loading reports as a CorruptBankError naming the file."""
    if not isinstance(config, dict):
        raise ValueError(f"the stored configuration is {describe(config)}; expected a JSON object")
    missing = [k for k in keys if k not in config]
    extra = sorted(k for k in config if k not in keys and k not in optional)
    if missing or extra:
        raise ValueError(f"the stored configuration lacks {missing} / has unexpected keys {extra}")
    return config



# ---------------------------------------------------------------------------------------------------
# Reading and writing one safetensors file
# ---------------------------------------------------------------------------------------------------
def _prepare_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"bank tensor {k!r}: got {describe(t)}; expected a tensor")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = t
    return out


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)

    atomic_replace(path, write)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON (NaN and infinities are never written to a bank)")


def _parse_json(data, where, what: str) -> dict:
    """``data`` (bytes or str) parsed as a JSON object, or CorruptBankError naming ``where``: invalid
    UTF-8 or JSON, NaN/Infinity, nesting too deep to parse, or valid JSON that is not an object."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        if not isinstance(text, str):
            raise TypeError(f"{describe(text)} instead of text")
        obj = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as e:
        msg = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise CorruptBankError(f"{where}: {what} is not valid JSON ({msg}); the file is altered or not a bank") from None
    if not isinstance(obj, dict):
        raise CorruptBankError(f"{where}: {what} is JSON {type(obj).__name__}, not an object; the file is altered or not a bank")
    return obj


def _read_header(path: Path) -> dict:
    """The raw safetensors JSON header of ``path`` (raises CorruptBankError when unreadable; refuses
    anything but a regular file before opening it, so a FIFO cannot block the reader)."""
    require_regular_file(path, "the bank file", CorruptBankError)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptBankError(f"{path}: file is {len(raw)} bytes long, too short for a safetensors header (truncated, or not an assocmem bank)")
        (n,) = struct.unpack("<Q", raw)
        size = os.fstat(f.fileno()).st_size
        if n > size - 8 or n > 100_000_000:
            raise CorruptBankError(f"{path}: safetensors header length {n} exceeds the file size {size} (truncated or altered, or not an assocmem bank)")
        text = f.read(n)
    return _parse_json(text, path, "the safetensors header")


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    header = _read_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CorruptBankError(f"{path}: safetensors metadata is not a dict; the file is altered")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except CorruptBankError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError / OSError for broken files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptBankError(f"{path}: safetensors could not read the tensors ({msg}); the file is truncated or altered") from None
    return tensors, meta


# ---------------------------------------------------------------------------------------------------
# Headers and manifests
# ---------------------------------------------------------------------------------------------------
def _check_format(obj, path: Path, what: str) -> None:
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
        raise CorruptBankError(f"{path}: {what} does not identify an assocmem bank (no 'format': {_FORMAT!r})")
    v = obj.get("format_version")
    if not isinstance(v, int) or isinstance(v, bool):
        raise CorruptBankError(f"{path}: {what} has format_version {v!r}; expected an integer")
    if v > FORMAT_VERSION:
        raise BankVersionError(
            f"{path}: written by a newer bank format (version {v}, assocmem {obj.get('assocmem_version', '?')}); "
            f"this assocmem {__version__} reads format versions up to {FORMAT_VERSION}: upgrade assocmem to load it"
        )
    if v < 1:
        raise CorruptBankError(f"{path}: {what} has format_version {v}; expected 1..{FORMAT_VERSION}")


def _header_for(obj, codec: _Codec, config: dict, tensors: dict[str, torch.Tensor]) -> dict:
    xi = tensors[codec.patterns_key]
    return {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "assocmem_version": __version__,
        "class": type(obj).__name__,
        "module": type(obj).__module__,
        "config": config,
        "patterns_key": codec.patterns_key,
        "dtype": _dtype_name(xi.dtype),
        "n_memories": int(xi.shape[0]),
        "n_features": int(xi.shape[1]),
    }


def _model_tensors(obj) -> tuple[_Codec, dict, dict[str, torch.Tensor]]:
    codec = _codec_for_object(obj)
    config, tensors = codec.to_bank(obj)
    storage = getattr(obj, "storage_dtype", None)  # half patterns computed in float32 are saved as half
    if (storage in (torch.float16, torch.bfloat16) and codec.patterns_key in tensors
            and tensors[codec.patterns_key].dtype == torch.float32):
        tensors = {**tensors, codec.patterns_key: tensors[codec.patterns_key].to(storage)}
    tensors = _prepare_tensors(tensors)
    xi = tensors.get(codec.patterns_key)
    if xi is None or xi.ndim != 2:
        raise TypeError(f"model: {type(obj).__name__} gave no 2-D pattern tensor {codec.patterns_key!r} to store")
    try:
        _canonical(config)
    except (TypeError, ValueError) as e:
        raise TypeError(f"model: the configuration of {type(obj).__name__} is not JSON-serialisable ({e})") from None
    return codec, config, tensors


def _seg_name(index: int) -> str:
    return f"seg-{index:06d}-{secrets.token_hex(4)}.safetensors"


def _manifest_digest(m: dict) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in m.items() if k != "manifest_sha256"}).encode()).hexdigest()


def _Lock(directory: Path) -> file_lock:
    """The writers' lock of a directory bank (``dir/.lock``)."""
    return file_lock(directory / ".lock")


def _file_lock(path: Path) -> file_lock:
    """The writers' lock of a single-file bank: ``.<name>.lock`` beside it (the bank itself is
    replaced by a rename on every write, so it cannot carry the lock)."""
    parent = path.parent if str(path.parent) else Path(".")
    return file_lock(parent / f".{path.name}.lock")


def _identity(path: Path):
    """What changes when a writer replaces ``path`` (a file bank, or a directory bank's manifest)."""
    target = path / _MANIFEST if path.is_dir() else path
    try:
        st = os.stat(target)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _is_bank_file(path: Path) -> bool:
    if path.stat().st_size == 0:
        return True
    try:
        meta = _read_header(path).get("__metadata__") or {}
    except CorruptBankError:
        return False
    return isinstance(meta, dict) and _META_KEY in meta


def _layout_for(path: Path, layout: str) -> str:
    if layout not in ("auto", "file", "dir"):
        raise ValueError(f"layout: got {layout!r}; expected 'auto', 'file' or 'dir'")
    if path.is_dir():
        if (path / _MANIFEST).exists() or not any(path.iterdir()):
            if layout == "file":
                raise ValueError(f"path: {path} is a directory; expected a file path for layout='file'")
            return "dir"
        raise ValueError(f"path: {path} is a non-empty directory that is not an assocmem bank; refusing to overwrite it")
    if path.exists():
        if not path.is_file() or not _is_bank_file(path):
            raise ValueError(f"path: {path} exists and is not an assocmem bank; refusing to overwrite it")
        if layout == "dir":
            raise ValueError(f"path: {path} is a single-file bank; remove it first to save a directory bank there")
        return "file"
    if layout != "auto":
        return layout
    return "file" if path.suffix == ".safetensors" else "dir"


def save(model, path, *, layout: str = "auto") -> "MemoryBank":
    """Write ``model`` to ``path`` as a memory bank, atomically, and return the :class:`MemoryBank`.

    ``layout="file"`` (the default for paths ending in ``.safetensors``): one safetensors file with
    the JSON header in its metadata; appending rewrites it (atomically). ``layout="dir"`` (the
    default otherwise): a directory with ``manifest.json`` and one safetensors segment per append,
    so appending writes only the new patterns. An existing bank at ``path`` is replaced; a crash at
    any moment leaves the old bank or the new one. Paths holding anything else are refused.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: got {describe(path)}; expected a file or directory path")
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"path: the directory {path.parent} does not exist")
    codec, config, tensors = _model_tensors(model)
    header = _header_for(model, codec, config, tensors)
    kind = _layout_for(path, layout)
    if kind == "file":
        with _file_lock(path):  # serialised with appends from other processes
            _write_single(path, header, tensors)
    else:
        _write_directory(path, header, tensors)
    return MemoryBank(path)


def _write_single(path: Path, header: dict, tensors: dict[str, torch.Tensor]) -> None:
    text = _canonical(header)
    meta = {_META_KEY: text, "sha256": _digest(tensors, text)}
    _write_safetensors(path, tensors, meta)


def _segment_meta(index: int, digest: str) -> dict[str, str]:
    return {"assocmem_bank_segment": str(index), "format_version": str(FORMAT_VERSION), "sha256": digest}


def _write_segment(directory: Path, index: int, tensors: dict[str, torch.Tensor]) -> dict:
    name = _seg_name(index)
    digest = _digest(tensors)
    _write_safetensors(directory / name, tensors, _segment_meta(index, digest))
    return {"file": name, "sha256": digest, "bytes": (directory / name).stat().st_size}


def _write_manifest(directory: Path, manifest: dict) -> None:
    manifest = dict(manifest)
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    atomic_write_bytes(directory / _MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())


def _cleanup(directory: Path, keep: set[str]) -> None:
    """Remove segments no manifest refers to and temporary files of interrupted writes."""
    for p in directory.iterdir():
        n = p.name
        if (_SEGMENT_RE.match(n) and n not in keep) or n.startswith(_TMP_PREFIX):
            try:
                p.unlink()
            except OSError:
                pass


def _write_directory(path: Path, header: dict, tensors: dict[str, torch.Tensor]) -> None:
    key = header["patterns_key"]
    manifest = dict(header)
    manifest["created"] = manifest["modified"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if path.exists():
        with _Lock(path):
            seg = _write_segment(path, 0, tensors)
            seg["rows"] = int(tensors[key].shape[0])
            manifest["segments"] = [seg]
            _write_manifest(path, manifest)
            _cleanup(path, {seg["file"]})
        return
    # a new bank is built in a hidden directory beside the target and renamed into place

    def fill(tmp: Path) -> None:
        seg = _write_segment(tmp, 0, tensors)
        seg["rows"] = int(tensors[key].shape[0])
        manifest["segments"] = [seg]
        _write_manifest(tmp, manifest)

    atomic_directory(path, fill)


# ---------------------------------------------------------------------------------------------------
# The bank object
# ---------------------------------------------------------------------------------------------------
class MemoryBank:
    """A memory bank on disk: ``MemoryBank(path)`` reads and checks its header (not the tensors);
    :meth:`load` verifies every checksum and rebuilds the model; :meth:`append` adds patterns.

    >>> import torch, tempfile, os
    >>> from assocmem import ModernHopfield, MemoryBank, load
    >>> d = tempfile.mkdtemp()
    >>> bank = ModernHopfield(torch.eye(3), beta=2.0).save(os.path.join(d, "bank"))
    >>> bank.append(torch.ones(2, 3)).n_memories
    5
    >>> m = load(os.path.join(d, "bank"))
    >>> m.beta, tuple(m.xi.shape)
    (2.0, (5, 3))
    """

    def __init__(self, path):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: got {describe(path)}; expected a file or directory path")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"path: no memory bank at {self.path}")
        self.layout = "dir" if self.path.is_dir() else "file"
        self._reread()

    # -- headers -------------------------------------------------------------------------------------
    def _read_file_header(self) -> dict:
        meta = _read_header(self.path).get("__metadata__")
        if not isinstance(meta, dict) or _META_KEY not in meta:
            raise CorruptBankError(f"{self.path}: not an assocmem bank (no '{_META_KEY}' entry in the safetensors metadata)")
        header = _parse_json(meta[_META_KEY], self.path, "the bank header")
        _check_format(header, self.path, "the bank header")
        self._check_header_fields(header)
        return header

    def _read_manifest(self) -> dict:
        mp = self.path / _MANIFEST
        if not os.path.lexists(mp):
            raise CorruptBankError(f"{self.path}: directory has no {_MANIFEST}; it is not an assocmem bank (or was damaged)")
        require_regular_file(mp, "the manifest", CorruptBankError)
        m = _parse_json(mp.read_bytes(), mp, "the manifest")
        _check_format(m, mp, "the manifest")
        if m.get("manifest_sha256") != _manifest_digest(m):
            raise CorruptBankError(f"{mp}: manifest checksum mismatch; the manifest was altered")
        self._check_header_fields(m, mp)
        segs = m.get("segments")
        if not isinstance(segs, list) or not segs or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and _SEGMENT_RE.match(s["file"]) for s in segs
        ):
            raise CorruptBankError(f"{mp}: manifest lists no valid segments")
        return m

    def _check_header_fields(self, h: dict, where: Path | None = None) -> None:
        where = where or self.path
        ok = (
            isinstance(h.get("class"), str)
            and isinstance(h.get("config"), dict)
            and isinstance(h.get("patterns_key"), str)
            and isinstance(h.get("dtype"), str) and h["dtype"] in _DTYPES
            and isinstance(h.get("n_memories"), int) and h["n_memories"] >= 0
            and isinstance(h.get("n_features"), int) and h["n_features"] >= 0
        )
        if not ok:
            raise CorruptBankError(f"{where}: bank header lacks or mangles class/config/dtype/shape fields")

    # -- properties ----------------------------------------------------------------------------------
    @property
    def class_name(self) -> str:
        return self.header["class"]

    @property
    def config(self) -> dict:
        return dict(self.header["config"])

    @property
    def n_memories(self) -> int:
        return self.header["n_memories"]

    @property
    def n_features(self) -> int:
        return self.header["n_features"]

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.header["dtype"]]

    @property
    def format_version(self) -> int:
        return self.header["format_version"]

    def __repr__(self) -> str:
        return (f"MemoryBank({str(self.path)!r}, class={self.class_name}, K={self.n_memories}, "
                f"N={self.n_features}, dtype={self.header['dtype']}, layout={self.layout})")

    # -- reading -------------------------------------------------------------------------------------
    def _segment(self, seg: dict) -> dict[str, torch.Tensor]:
        p = self.path / seg["file"]
        if not os.path.lexists(p):
            raise CorruptBankError(f"{p}: segment listed in the manifest is missing")
        require_regular_file(p, "the segment", CorruptBankError)
        if isinstance(seg.get("bytes"), int) and p.stat().st_size != seg["bytes"]:
            raise CorruptBankError(f"{p}: segment is {p.stat().st_size} bytes, the manifest says {seg['bytes']} (truncated or altered)")
        tensors, meta = _load_safetensors(p)
        if _digest(tensors) != seg.get("sha256"):
            raise CorruptBankError(f"{p}: SHA-256 checksum mismatch; the segment's tensors were altered")
        if meta != _segment_meta(int(_SEGMENT_RE.match(seg["file"]).group(1)), seg["sha256"]):
            raise CorruptBankError(f"{p}: segment metadata does not match the manifest; the segment was altered or swapped")
        return tensors

    def _reread(self) -> None:
        self._ident = _identity(self.path)
        self.header = self._read_manifest() if self.layout == "dir" else self._read_file_header()

    def _consistent(self, read):
        """``read()`` made safe against a writer in another process: a checksum, shape or
        missing-segment error raised after the bank was replaced (since its header was read) is
        retried on the new state; a bank that fails without having changed is corrupt."""
        for _ in range(20):
            try:
                return read()
            except CorruptBankError:
                if _identity(self.path) == self._ident:
                    raise
            time.sleep(0.005)
            self._reread()
        return read()

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every stored tensor, checksums verified (segments concatenated along the pattern axis).
        A bank replaced by another process while it is read is read again (see ``append``)."""
        return self._consistent(self._tensors)

    def _tensors(self) -> dict[str, torch.Tensor]:
        key = self.header["patterns_key"]
        if self.layout == "file":
            tensors, meta = _load_safetensors(self.path)
            if set(meta) != {_META_KEY, "sha256"}:
                raise CorruptBankError(f"{self.path}: unexpected safetensors metadata keys {sorted(meta)}; the file was altered")
            if _digest(tensors, meta.get(_META_KEY, "")) != meta.get("sha256"):
                raise CorruptBankError(f"{self.path}: SHA-256 checksum mismatch; the bank's tensors or header were altered")
        else:
            parts = [self._segment(s) for s in self.header["segments"]]
            tensors = dict(parts[0])
            if key not in tensors or any(set(p) != {key} for p in parts[1:]):
                raise CorruptBankError(f"{self.path}: segments do not hold the expected tensors")
            if len(parts) > 1:
                tensors[key] = torch.cat([p[key] for p in parts], 0)
        xi = tensors.get(key)
        if xi is None or xi.ndim != 2 or tuple(xi.shape) != (self.n_memories, self.n_features) or xi.dtype != self.dtype:
            raise CorruptBankError(
                f"{self.path}: stored patterns are {describe(xi)}; the header says "
                f"({self.n_memories}, {self.n_features}) {self.header['dtype']}"
            )
        return tensors

    def load(self, device=None):
        """Verify and rebuild the stored model (on ``device``, default CPU)."""
        tensors = self.tensors()  # may re-read the header (a concurrent writer): take the codec after it
        codec = _codec_for_name(self.class_name, self.header.get("module"), self.path)
        if device is not None:
            tensors = {k: v.to(device) for k, v in tensors.items()}
        return self._rebuild(codec, self.header["config"], tensors)

    def _rebuild(self, codec: _Codec, config, tensors):
        try:
            return codec.from_bank(config, tensors)
        except CorruptBankError:
            raise
        except Exception as e:  # whatever a stored configuration makes the constructor raise
            raise CorruptBankError(
                f"{self.path}: the stored configuration does not rebuild a {self.class_name} ({type(e).__name__}: {e})"
            ) from None

    def verify(self) -> "MemoryBank":
        """Read every tensor and check every checksum; raises CorruptBankError on any mismatch."""
        self.tensors()
        return self

    # -- appending -----------------------------------------------------------------------------------
    def _check_new(self, patterns, codec: _Codec, others: dict[str, torch.Tensor], kwargs: dict):
        """The new rows in the bank's dtype, and the stored configuration after appending them
        (the class's ``_bank_extend``); the class's own constructor checks the new rows."""
        N = self.n_features
        p = check_tensor("patterns", patterns, ndim=(1, 2), allow_empty=True, expected=f"shape (K, {N}) or ({N},)")
        if p.ndim == 1:
            p = p.unsqueeze(0)
        if p.shape[1] != N:
            raise ValueError(f"patterns: got {describe(p)}; expected {N} features per pattern to match the bank {self.path}")
        config = self.header["config"]
        extend = getattr(codec.cls, "_bank_extend", None)
        if p.shape[0] == 0:
            if kwargs and extend is not None:
                extend(config, self.n_memories, 0, **kwargs)  # still reject unknown keywords
            return p.to("cpu", self.dtype), config
        cast = p.detach().to("cpu", self.dtype).contiguous()
        if not bool(torch.isfinite(cast).all()):
            raise ValueError(f"patterns: values overflow the bank's dtype {self.header['dtype']} or are not finite; expected finite values")
        if extend is not None:
            config = extend(config, self.n_memories, int(cast.shape[0]), **kwargs)
        elif kwargs:
            raise TypeError(f"append: {self.class_name} banks take no keyword arguments; got {sorted(kwargs)}")
        # the class's own constructor checks the new rows (e.g. +-1 for binary models), with the
        # configuration of those rows alone (``_bank_slice``: e.g. the appended images' names)
        slice_ = getattr(codec.cls, "_bank_slice", None)
        rows_config = config if slice_ is None else slice_(config, self.n_memories, self.n_memories + int(cast.shape[0]))
        codec.from_bank(rows_config, {**others, self.header["patterns_key"]: cast})
        return cast, config

    def append(self, patterns, **kwargs) -> "MemoryBank":
        """Add patterns (rows of shape (N,)) to the bank, with the same atomicity and checksums.

        Directory banks: one new segment file is written and the manifest replaced last, so the
        cost is proportional to the new patterns. Single-file banks are rewritten whole (atomically).
        Both take the bank's writers' lock and re-read the bank under it, so appends from several
        processes (and a re-save by another process) are serialised and no row is lost; the call
        returns only when the new rows are on disk. Keyword arguments go to the stored class (for
        example ``names=`` of the appended images of an ``ImageMemory`` bank).
        Returns ``self`` with the updated header.
        """
        if self.layout == "file":
            with _file_lock(self.path):
                self._reread()  # the newest state, under the lock
                codec = _codec_for_name(self.class_name, self.header.get("module"), self.path)
                key = self.header["patterns_key"]
                tensors = self._tensors()
                n_old = self.n_memories
                new, config = self._check_new(patterns, codec, {k: v for k, v in tensors.items() if k != key}, kwargs)
                if new.shape[0] == 0:
                    return self
                tensors[key] = torch.cat([tensors[key], new], 0)
                header = dict(self.header)
                header["config"] = config
                header["n_memories"] = n_old + int(new.shape[0])
                _write_single(self.path, header, tensors)
                self._reread()
            self._check_appended(n_old + int(new.shape[0]))
            return self
        with _Lock(self.path):
            self._reread()  # the newest state, under the lock
            codec = _codec_for_name(self.class_name, self.header.get("module"), self.path)
            key = self.header["patterns_key"]
            first = self.header["segments"][0]
            others = {k: v for k, v in self._segment_small(first, key).items()}
            n_old = self.n_memories
            new, config = self._check_new(patterns, codec, others, kwargs)
            if new.shape[0] == 0:
                return self
            index = max(int(_SEGMENT_RE.match(s["file"]).group(1)) for s in self.header["segments"]) + 1
            seg = _write_segment(self.path, index, {key: new})
            seg["rows"] = int(new.shape[0])
            m = {k: v for k, v in self.header.items() if k != "manifest_sha256"}
            m["config"] = config
            m["segments"] = list(self.header["segments"]) + [seg]
            m["n_memories"] = n_old + int(new.shape[0])
            m["modified"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            _write_manifest(self.path, m)
            _cleanup(self.path, {s["file"] for s in m["segments"]})
            self._reread()
        self._check_appended(n_old + int(new.shape[0]))
        return self

    def _check_appended(self, expected: int) -> None:
        if self.n_memories != expected:  # pragma: no cover - a writer that ignored the lock
            raise CorruptBankError(
                f"{self.path}: after appending, the bank holds {self.n_memories} patterns where {expected} were "
                "expected; another process wrote it without taking the lock"
            )

    def _segment_small(self, seg: dict, key: str) -> dict[str, torch.Tensor]:
        """The tensors of the first segment other than the patterns (read lazily, no full load)."""
        from safetensors import safe_open

        p = self.path / seg["file"]
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys() if k != key}
        except Exception as e:
            raise CorruptBankError(f"{p}: safetensors could not read the segment ({e})") from None


def open_bank(path) -> MemoryBank:
    """Open the bank at ``path`` (header checked; tensors verified on :meth:`MemoryBank.load`)."""
    return MemoryBank(path)


def load(path, device=None):
    """Load the model stored at ``path`` by ``model.save(path)``, verifying every checksum.

    Raises ``FileNotFoundError`` when nothing is there, :class:`~assocmem.CorruptBankError` naming
    the file and the failed check when it is truncated or altered, and
    :class:`~assocmem.BankVersionError` when a newer format wrote it.
    """
    return MemoryBank(path).load(device=device)
