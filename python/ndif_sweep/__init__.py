"""ndif-sweep's Python side.

`ndif_sweep.encoder` is the long-lived process that builds NDIF G4 request blobs with the user's
own nnsight (started by `ndif-sweep run` and `ndif-sweep check`; it never touches the network).
Nothing here imports nnsight, torch or h5py at import time.
"""

__version__ = "0.1.0"
