"""ndif-sweep's Python side.

Reading and analysing sweeps (numpy and h5py; matplotlib only for plots; no nnsight):
`ndif_sweep.open_sweep(path)` gives a `Sweep` of a complete, partial or live output file;
`ndif_sweep.analyze` has per-layer norms, group cosines, difference-of-means directions, a 2-D PCA,
linear probes and non-finite counts; `ndif_sweep.plots` draws them; `python3 -m ndif_sweep.report`
(or `ndif-sweep report`) writes PNGs and an HTML page.

`ndif_sweep.encoder` is the long-lived process that builds NDIF G4 request blobs with the user's
own nnsight (started by `ndif-sweep run` and `ndif-sweep check`; it never touches the network).
Importing the package imports nothing: the encoder must start in an interpreter without numpy
(to say so itself), and numpy, h5py, nnsight, torch and matplotlib are imported on use.
"""

__version__ = "0.1.0"

_READER = ("FORMAT", "NotASweep", "Sweep", "SweepError", "bfloat16_to_float32", "open_sweep")
__all__ = list(_READER)


def __getattr__(name):
    if name in _READER:
        from . import sweep  # noqa: PLC0415

        return getattr(sweep, name)
    raise AttributeError(f"module 'ndif_sweep' has no attribute {name!r}")
