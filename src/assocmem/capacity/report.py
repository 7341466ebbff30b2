"""Capacity reports on disk: CSV, JSON and a log-log PNG of measured K against N with the theory curves
of :mod:`assocmem.capacity.reference` on the same axes, each file written atomically."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Sequence

import numpy as np
import torch

from .._io import atomic_write_bytes
from .reference import theory_curves
from .search import CapacityReport
from .settings import capacity_settings

__all__ = ["report_json", "report_csv", "plot_capacity", "write_report"]


# -------------------------------------------------------------------------------------------------
# output: CSV, JSON, PNG (each written atomically)
# -------------------------------------------------------------------------------------------------
def _atomic_write(path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def report_json(report: CapacityReport) -> str:
    """The report as one JSON object: model, criterion, settings, results [{N, K, K_std, theory, ...}],
    exponent (null with fewer than two usable sizes)."""
    return json.dumps(_jsonable(report.to_dict()), allow_nan=False)


def report_csv(report: CapacityReport) -> str:
    """One row per N: N, K, K_std, theory, censored, seconds, the per-trial estimates (';'-joined) and,
    for the threshold model, the hidden bits N_h and N_h_std."""
    extra = ["N_h", "N_h_std"] if report.model == "threshold" else []
    cols = ["N", "K", "K_std", "theory", "censored", "seconds", "K_trials"] + extra
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in report.results:
        row = r.row()
        vals = []
        for c in cols:
            v = row.get(c)
            if c == "K_trials":
                v = ";".join(f"{k:g}" for k in v)
            elif v is None:
                v = ""
            elif isinstance(v, float):
                v = f"{v:.6g}"
            vals.append(v)
        w.writerow(vals)
    return buf.getvalue()


def plot_capacity(reports: Sequence[CapacityReport], path=None, title: str | None = None, theory: bool = True,
                  labels: Sequence[str] | None = None, ax=None):
    """Measured K vs N on log-log axes, one series per report (error bars: spread over trials; an open
    marker where the estimate is censored at k_max), with the matching theory curves on the same axes.
    Writes a PNG to ``path`` atomically when given; returns the matplotlib figure."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if isinstance(reports, CapacityReport):
        reports = [reports]
    own = ax is None
    fig, ax = (plt.subplots(figsize=(6.4, 4.6)) if own else (ax.figure, ax))
    Ns_all = [r.N for rep in reports for r in rep.results]
    lo, hi = min(Ns_all) / 1.3, max(Ns_all) * 1.3
    grid = np.geomspace(max(lo, 2.0), hi, 200)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, rep in enumerate(reports):
        c = colors[j % len(colors)]
        N = np.array([r.N for r in rep.results], float)
        K = np.array([r.K for r in rep.results], float)
        E = np.array([r.K_std for r in rep.results], float)
        cens = np.array([any(r.censored) for r in rep.results])
        lab = labels[j] if labels else f"{rep.model} ({rep.criterion})"
        if rep.exponent is not None:
            lab += f", slope {rep.exponent:.2f}"
        ok = K > 0
        if rep.model == "threshold":  # K = 2^(mean N_h): the spread is multiplicative, 2^(+-std N_h)
            sd = np.array([r.extra.get("N_h_std", 0.0) for r in rep.results], float)
            yerr = np.vstack([K - K * 2.0 ** -sd, K * 2.0 ** sd - K])
        else:  # on log axes a lower bar below zero cannot be drawn: cap it at 90 % of K
            yerr = np.vstack([np.minimum(E, 0.9 * K), E])
        sel = ok & ~cens
        ax.errorbar(N[sel], K[sel], yerr=yerr[:, sel], fmt="o-", color=c, capsize=3, label=lab)
        if (ok & cens).any():
            ax.plot(N[ok & cens], K[ok & cens], "^", mfc="none", color=c, label=f"{lab}: >= (k_max reached)")
        if theory:
            spec = capacity_settings(rep.model, rep.criterion, **_settings_kwargs(rep.settings))
            for k, (name, f) in enumerate(theory_curves(rep.model, rep.criterion, _spec=spec).items()):
                try:
                    y = np.asarray(f(grid), float)
                except ValueError:
                    continue
                y = np.where(y > 0, y, np.nan)
                ax.plot(grid, y, ["--", ":", "-."][k % 3], color=c, alpha=0.7, lw=1.2, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    thr = all(rep.model == "threshold" for rep in reports)
    ax.set_xlabel("N_v (visible neurons)" if thr else "N (feature neurons)")
    ax.set_ylabel("stable hidden states 2^N_h" if thr else "capacity K (stored patterns)")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    if own:
        fig.tight_layout()
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        _atomic_write(path, buf.getvalue())
    return fig


def _settings_kwargs(settings: dict) -> dict:
    """Keyword arguments of :func:`capacity_settings` from a report's ``settings`` dict."""
    keep = {"threshold", "patterns", "coding_level", "flip", "occlude", "noise", "n", "F", "beta", "n_hidden",
            "probes", "max_steps", "k_min", "k_max", "growth", "rel_tol", "trials", "seed", "theta", "tau_v",
            "tau_h", "dendrites"}
    kw = {k: v for k, v in settings.items() if k in keep}
    if "dtype" in settings:
        kw["dtype"] = getattr(torch, settings["dtype"])
    return kw


def write_report(report: CapacityReport, out_dir) -> dict:
    """Write ``capacity.csv``, ``capacity.json`` and ``capacity.png`` into ``out_dir`` (created if
    missing), each atomically; returns name -> path. The three are rendered first, so a failure
    leaves no partial file."""
    os.makedirs(out_dir, exist_ok=True)
    csv_text = report_csv(report)
    json_text = report_json(report)
    paths = {k: os.path.join(out_dir, f"capacity.{k}") for k in ("csv", "json", "png")}
    fig = plot_capacity([report], None, title=f"{report.model}: capacity ({report.criterion} criterion)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    _atomic_write(paths["csv"], csv_text.encode())
    _atomic_write(paths["json"], (json_text + "\n").encode())
    _atomic_write(paths["png"], buf.getvalue())
    return paths
