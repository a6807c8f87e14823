"""Plots of the analyses in `ndif_sweep.analyze` (matplotlib, drawn off screen).

Each function draws one figure, writes it as a PNG to `path` and returns the path; `ax=` draws into
an existing axes instead (a notebook cell) and returns the axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def _pyplot():
    import matplotlib  # noqa: PLC0415 (only plots need matplotlib)

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg")
        except Exception:  # noqa: BLE001 - an interactive backend already chosen stays
            pass
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _finish(fig, ax, path, own):
    if not own:
        return ax
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def _integer_layers(ax):
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _axes(ax):
    if ax is not None:
        return ax.figure, ax, False
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.0))
    return fig, ax, True


def layer_curve(layers: Sequence[int], values, path=None, title: str = "", ylabel: str = "",
                label: Optional[str] = None, ax=None):
    """One value per layer as a line with markers (mean norm, cosine, separation...)."""
    fig, ax, own = _axes(ax)
    ax.plot(list(layers), np.asarray(values, dtype=float), marker="o", label=label)
    ax.set_xlabel("layer")
    _integer_layers(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if label:
        ax.legend()
    return _finish(fig, ax, path, own)


def norms(layers, values, path=None, probe: str = "", ax=None):
    """Mean activation norm per layer."""
    return layer_curve(layers, values, path, f"{probe}: mean activation norm per layer", "mean L2 norm",
                       ax=ax)


def cosine(layers, values, path=None, probe: str = "", groups=("a", "b"), ax=None):
    """Cosine similarity of two groups' mean vectors per layer."""
    return layer_curve(layers, values, path,
                       f"{probe}: cosine of the group means ({groups[0]} vs {groups[1]})", "cosine", ax=ax)


def separation(layers, values, path=None, probe: str = "", groups=("a", "b"), ax=None):
    """Distance between the two groups' means per layer (the difference-of-means length)."""
    return layer_curve(layers, values, path,
                       f"{probe}: |mean({groups[0]}) - mean({groups[1]})| per layer", "distance", ax=ax)


def probe_accuracy(layers, accuracy, path=None, probe: str = "", field: str = "", kind: str = "ridge",
                   chance: Optional[float] = None, ax=None):
    """Held-out accuracy of a linear probe per layer, with the chance level if given."""
    fig, ax, own = _axes(ax)
    ax.plot(list(layers), np.asarray(accuracy, dtype=float), marker="o", label=f"{kind} probe")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", label="chance")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer")
    _integer_layers(ax)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{probe}: predicting {field!r} per layer")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _finish(fig, ax, path, own)


def pca_scatter(coords: np.ndarray, labels: Sequence, path=None, title: str = "", explained=None, ax=None):
    """The 2-D PCA coordinates, coloured by a meta field's value."""
    fig, ax, own = _axes(ax)
    labels = list(labels)
    for value in sorted(set(labels), key=repr):
        mask = np.array([v == value for v in labels], dtype=bool)
        ax.scatter(coords[mask, 0], coords[mask, 1], s=12, alpha=0.7, label=str(value))
    if explained is not None:
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}%)")
    else:
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _finish(fig, ax, path, own)
