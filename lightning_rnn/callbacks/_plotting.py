"""Figures shared by the diagnostics callbacks (matplotlib, Agg canvas: no display, no pyplot state)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np


def lag_step_heatmap(
    steps: Sequence[int],
    curves: Sequence[Sequence[float]],
    path: str,
    *,
    horizons: Sequence[int | None] | None = None,
    eps: float | None = None,
    title: str = "Gradient flow: log10 G(k)/G(0)",
    floor: float = -8.0,
) -> str:
    """Save a lag × training-step heatmap of ``log10`` of normalised per-lag gradient norms as a PNG.

    Args:
        steps: training step of each probe (x axis), increasing.
        curves: one normalised curve G(k)/G(0) per probe (lengths may differ; missing lags are blank).
        path: PNG file to write (parent folders are created).
        horizons: gradient horizon of each probe (drawn as white dots; None entries skipped).
        eps: the horizon threshold, drawn as a contour of ``log10(eps)``.
        title: figure title.
        floor: lower clip of the colour scale (log10 units); zeros map to it.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_lags = max((len(c) for c in curves), default=1)
    z = np.full((num_lags, max(len(curves), 1)), np.nan)  # (K+1, probes)
    for j, curve in enumerate(curves):
        c = np.asarray(curve, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z[: len(c), j] = np.maximum(np.log10(c), floor)
    x = np.asarray(list(steps), dtype=float)
    if x.size == 0:
        x = np.zeros(1)
    # cell edges: midpoints between probes, half a gap beyond the ends
    gaps = np.diff(x) if x.size > 1 else np.ones(1)
    edges = np.concatenate([[x[0] - gaps[0] / 2], (x[:-1] + x[1:]) / 2, [x[-1] + gaps[-1] / 2]])
    lag_edges = np.arange(num_lags + 1) - 0.5

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    finite = z[np.isfinite(z)]
    vmax = max(0.0, float(finite.max())) if finite.size else 0.0
    vmin = min(float(finite.min()), -1.0) if finite.size else -1.0
    mesh = ax.pcolormesh(edges, lag_edges, np.ma.masked_invalid(z), cmap="viridis", vmin=vmin, vmax=vmax,
                         shading="flat")
    fig.colorbar(mesh, ax=ax, label="log10 G(k)/G(0)")
    if eps is not None and len(curves) > 1 and finite.size:
        ax.contour(x, np.arange(num_lags), np.nan_to_num(z, nan=floor), levels=[math.log10(eps)],
                   colors="white", linewidths=0.8, linestyles="--")
    if horizons is not None:
        pts = [(s, h) for s, h in zip(x, horizons) if h is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "w.", markersize=4,
                    label=f"horizon (G(k)/G(0) < {eps:g})" if eps is not None else "horizon")
            ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("training step (trainer.global_step)")
    ax.set_ylabel("lag k")
    ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
