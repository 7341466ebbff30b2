"""HTML reports of the demos: one self-contained ``index.html`` (tables, PNG figures embedded as
data URIs and also written beside it), the results as ``results.csv`` and ``results.json``, and
a plain-text table for the terminal. No equations here; the whole folder is written atomically.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ._io import create_mode
from ._validation import describe

__all__ = ["Column", "Report", "format_table", "figure_png", "check_report_target", "write_report_folder"]


@dataclass
class Column:
    """A table column: record ``key``, header ``label`` and a ``fmt`` spec (``"%"`` for percentages)."""

    key: str
    label: str | None = None
    fmt: str = ""

    def header(self) -> str:
        return self.label or self.key

    def cell(self, record: dict) -> str:
        v = record.get(self.key, "")
        if v is None or v == "":
            return ""
        if self.fmt == "%":
            return f"{100.0 * float(v):.1f} %"
        if self.fmt and isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            return format(v, self.fmt)
        return str(v)


def _columns(records: Sequence[dict], columns: Sequence[Column | str] | None) -> list[Column]:
    if columns is None:
        keys: list[str] = []
        for r in records:
            keys.extend(k for k in r if k not in keys)
        columns = keys
    return [c if isinstance(c, Column) else Column(str(c)) for c in columns]


def format_table(records: Sequence[dict], columns: Sequence[Column | str] | None = None) -> str:
    """The records as a fixed-width text table (numbers right-aligned).

    >>> print(format_table([{"model": "modern", "exact": 0.98}], [Column("model"), Column("exact", "exact recall", "%")]))
    model   exact recall
    modern        98.0 %
    """
    cols = _columns(records, columns)
    rows = [[c.cell(r) for c in cols] for r in records]
    widths = [max([len(c.header())] + [len(row[i]) for row in rows]) for i, c in enumerate(cols)]
    numeric = [all(_is_number(r.get(c.key)) for r in records) and bool(records) for c in cols]

    def line(cells):
        return "  ".join((s.rjust(w) if num else s.ljust(w)) for s, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line([c.header() for c in cols])] + [line(r) for r in rows])


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def figure_png(fig, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h3 { font-size: 1.05em; margin: 1.2em 0 0.3em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f0f0f0; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.meta { color: #666; font-size: 0.85em; }
"""


@dataclass
class Report:
    """A report page built section by section, then written with :meth:`write`.

    ``records`` are the result rows (saved as results.csv / results.json); tables and figures are
    added in reading order.
    """

    title: str
    records: list[dict] = field(default_factory=list)
    _body: list[str] = field(default_factory=list)
    _files: dict[str, bytes] = field(default_factory=dict)

    def heading(self, text: str) -> None:
        self._body.append(f"<h2>{html.escape(text)}</h2>")

    def subheading(self, text: str) -> None:
        self._body.append(f"<h3>{html.escape(text)}</h3>")

    def paragraph(self, text: str, raw_html: bool = False) -> None:
        self._body.append(f"<p>{text if raw_html else html.escape(text)}</p>")

    def items(self, lines: Sequence[str]) -> None:
        self._body.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in lines) + "</ul>")

    def table(self, records: Sequence[dict], columns: Sequence[Column | str] | None = None, caption: str = "",
              table_id: str | None = None) -> None:
        cols = _columns(records, columns)
        ident = f' id="{html.escape(table_id)}"' if table_id else ""
        out = [f"<table{ident}>"]
        if caption:
            out.append(f"<caption>{html.escape(caption)}</caption>")
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(c.header())}</th>" for c in cols) + "</tr></thead><tbody>")
        for r in records:
            cells = []
            for c in cols:
                cls = ' class="num"' if _is_number(r.get(c.key)) else ""
                cells.append(f"<td{cls}>{html.escape(c.cell(r))}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        self._body.append("".join(out))

    def figure(self, name: str, png: bytes, caption: str = "", alt: str | None = None) -> None:
        """Add a PNG (bytes): embedded in the page as a data URI and written beside it as ``name``."""
        if not isinstance(png, (bytes, bytearray)) or not bytes(png[:8]) == b"\x89PNG\r\n\x1a\n":
            raise TypeError(f"png: got {describe(png)}; expected the bytes of a PNG image")
        if not name.endswith(".png") or "/" in name or name.startswith("."):
            raise ValueError(f"name: got {name!r}; expected a plain file name ending in .png")
        self._files[name] = bytes(png)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        alt_text = html.escape(alt if alt is not None else (caption or name))
        cap = f"<figcaption>{html.escape(caption)} <a href=\"{html.escape(name)}\">({html.escape(name)})</a></figcaption>"
        self._body.append(f'<figure><img src="{uri}" alt="{alt_text}" data-file="{html.escape(name)}">{cap}</figure>')

    def html(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(self.title)}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(self.title)}</h1>\n"
            + "\n".join(self._body)
            + f"\n<p class=\"meta\">Written by assocmem on {stamp}. Results: "
            "<a href=\"results.csv\">results.csv</a>, <a href=\"results.json\">results.json</a>.</p>\n</body></html>\n"
        )

    def write(self, out) -> Path:
        """Write the report folder ``out`` (see :func:`write_report_folder`); returns index.html's path."""
        files = dict(self._files)
        files["index.html"] = self.html().encode("utf-8")
        files["results.json"] = (json.dumps(_jsonable(self.records), indent=1, allow_nan=False) + "\n").encode("utf-8")
        files["results.csv"] = _csv_bytes(self.records)
        return write_report_folder(out, files) / "index.html"


def _jsonable(x: Any):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        return _jsonable(x.item())
    return x


def _csv_bytes(records: Sequence[dict]) -> bytes:
    keys: list[str] = []
    for r in records:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: _jsonable(r.get(k, "")) for k in keys})
    return buf.getvalue().encode("utf-8")


_MARKERS = ("index.html", "results.json")


def check_report_target(out) -> Path:
    """The absolute path of report folder ``out`` after checking that it may be written: its parent
    exists, and ``out`` is absent, empty, or an earlier assocmem report (index.html and results.json)."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: got {describe(out)}; expected a folder path")
    out = Path(out).absolute()
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out: {out} exists and is not a folder; expected a new folder or an earlier report")
        if any(out.iterdir()) and not all((out / m).exists() for m in _MARKERS):
            raise ValueError(f"--out: {out} is a non-empty folder that is not an assocmem report; refusing to overwrite it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: the parent folder {out.parent} does not exist")
    return out


def write_report_folder(out, files: dict[str, bytes]) -> Path:
    """Write ``files`` (name -> bytes) as the folder ``out``, all or nothing.

    Everything goes into a temporary folder beside ``out`` (each file fsynced), which then replaces
    ``out`` by renames; an interrupted run leaves the previous report or none, never a partial one.
    An existing ``out`` that is not an assocmem report is refused (see :func:`check_report_target`).
    """
    out = check_report_target(out)
    parent = out.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=parent))
    old = None
    try:
        os.chmod(tmp, create_mode(directory=True))  # what mkdir() gives, not mkdtemp's private 0700
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}.", dir=parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)  # put the previous report back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
