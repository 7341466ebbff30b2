"""Helpers shared by the examples: corrupting cues, scoring recalls (exact recall, pixel error, per-cue
steps from the energy trace of ``recall``), image mosaics and energy-vs-step plots for the reports.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["corrupt", "score", "steps_from_energy", "pad_traces", "mosaic", "plot_energy", "new_figure"]

CORRUPTIONS = ("flip 20%", "occlude bottom half", "erase 30%")


def corrupt(target: torch.Tensor, kind: str, shape: tuple[int, int], generator: torch.Generator):
    """(flips, known): for ``"flip 20%"`` the pixels to flip (known is all True); for
    ``"occlude bottom half"`` and ``"erase 30%"`` no flips and ``known`` False on the unknown pixels."""
    B, N = target.shape
    flips = torch.zeros(B, N, dtype=torch.bool)
    known = torch.ones(B, N, dtype=torch.bool)
    if kind == "flip 20%":
        flips = torch.rand(B, N, generator=generator) < 0.2
    elif kind == "occlude bottom half":
        H, W = shape
        known = known.view(B, H, W)
        known[:, H // 2:, :] = False
        known = known.reshape(B, N)
    elif kind == "erase 30%":
        known = torch.rand(B, N, generator=generator) >= 0.3
    else:  # pragma: no cover - internal
        raise ValueError(f"kind: got {kind!r}; expected one of {CORRUPTIONS}")
    return flips, known


def score(state: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cue: exact (sign(state) pixel-identical to target) and the fraction of wrong pixels.
    A zero component (no sign) counts as wrong."""
    wrong = torch.sign(state) != target
    return ~wrong.any(-1), wrong.float().mean(-1)


def steps_from_energy(energy: torch.Tensor, steps: int) -> torch.Tensor:
    """Per-cue updates until the state stopped changing, from ``RecallResult.energy`` (steps + 1, B):
    ``recall`` freezes a converged state (its energy is repeated), so this is 1 + the last step
    that changed the energy (the extra 1 is the update that found nothing left to change),
    capped at ``steps``."""
    e = energy
    if e.ndim == 1:
        e = e.unsqueeze(1)
    if e.shape[0] < 2:
        return torch.zeros(e.shape[1], dtype=torch.long)
    changed = e[1:] != e[:-1]  # (steps, B)
    idx = torch.arange(1, e.shape[0]).unsqueeze(1).expand_as(changed)
    last = torch.where(changed, idx, torch.zeros_like(idx)).amax(0)
    return torch.clamp(last + 1, max=max(steps, 1))


def pad_traces(traces: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate energy traces (T_i, B_i) along cues, repeating each chunk's last row to max T."""
    T = max(t.shape[0] for t in traces)
    out = []
    for t in traces:
        if t.shape[0] < T:
            t = torch.cat([t, t[-1:].expand(T - t.shape[0], -1)], 0)
        out.append(t)
    return torch.cat(out, 1)


def _to_rgb(x: np.ndarray, unknown: np.ndarray | None = None, wrong: np.ndarray | None = None) -> np.ndarray:
    """+-1 (or continuous, clipped) pixels -> RGB: ink (+1) black on white, unknown blue-grey; wrong
    pixels red where ink was recalled and pink where background was."""
    g = np.clip((1.0 - x) / 2.0, 0.0, 1.0)  # +1 -> 0 (black ink), -1 -> 1 (white)
    rgb = np.stack([g, g, g], -1)
    if unknown is not None:
        rgb[unknown] = (0.72, 0.78, 0.86)
    if wrong is not None:
        rgb[wrong & (x > 0)] = (0.85, 0.1, 0.1)
        rgb[wrong & (x <= 0)] = (1.0, 0.72, 0.72)
    return rgb


def mosaic(rows: list[list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]], shape: tuple[int, int],
           gap: int = 2, group: int = 3, group_gap: int = 6) -> np.ndarray:
    """An RGB mosaic: ``rows`` of tiles ``(pixels (N,), unknown mask or None, wrong mask or None)``;
    every ``group`` tiles (cue | recalled | original) are separated by a wider gap."""
    H, W = shape
    n_cols = max(len(r) for r in rows)
    n_groups = (n_cols + group - 1) // group
    width = n_cols * W + (n_cols - n_groups) * gap + (n_groups - 1) * group_gap
    height = len(rows) * H + (len(rows) - 1) * group_gap
    canvas = np.ones((height, width, 3))
    for i, row in enumerate(rows):
        y = i * (H + group_gap)
        x = 0
        for j, (pix, unknown, wrong) in enumerate(row):
            tile = _to_rgb(np.asarray(pix, dtype=float).reshape(H, W),
                           None if unknown is None else np.asarray(unknown).reshape(H, W),
                           None if wrong is None else np.asarray(wrong).reshape(H, W))
            canvas[y:y + H, x:x + W] = tile
            x += W + (group_gap if (j + 1) % group == 0 else gap)
    return canvas


def new_figure(*args, **kwargs):
    """A matplotlib figure on the Agg canvas (no display needed, nothing global touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(*args, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def mosaic_png(image: np.ndarray, scale: int = 3) -> bytes:
    """PNG bytes of an RGB mosaic, each pixel drawn as ``scale`` x ``scale`` (crisp, no smoothing)."""
    import io

    import matplotlib.image as mpimg

    big = np.repeat(np.repeat(image, scale, 0), scale, 1)
    buf = io.BytesIO()
    mpimg.imsave(buf, np.clip(big, 0, 1), format="png")
    return buf.getvalue()


def plot_energy(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], xlabel: dict[str, str] | None = None):
    """One panel per model: mean energy over the cues vs step (or time), one line per corruption.
    Panels whose (negative) energies span many orders of magnitude show -log10(-E) instead, which
    falls whenever E falls."""
    names = list(curves)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig = new_figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        ys = np.concatenate([np.asarray(y, dtype=float) for _, y in curves[name].values()])
        ys = ys[np.isfinite(ys)]
        logscale = ys.size > 0 and bool((ys < 0).all()) and float(np.abs(ys).max()) / float(np.abs(ys).min()) > 1e3
        for label, (x, y) in curves[name].items():
            y = np.asarray(y, dtype=float)
            ax.plot(x, -np.log10(-y) if logscale else y, marker="o" if len(x) <= 30 else None, ms=3, label=label)
        ax.set_title(name)
        ax.set_xlabel((xlabel or {}).get(name, "step (sweep or update)"))
        ax.set_ylabel("-log10(-E), E = mean energy" if logscale else "mean energy E")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig
