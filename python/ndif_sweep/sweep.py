"""Reading an ndif-sweep output file (format `ndif-sweep/1`, docs/output-format.md) from Python.

A file may be complete, partial (a run stopped or was killed) or live (a run is writing it). A row
is valid exactly when its batch's flag (`/batches/done`) is set; every other row of `/acts` is
undefined. `Sweep` therefore answers every question about rows from the flags, re-read on each
look: HDF5 caches what it read, so each look reopens the file (the run never changes a dataset's
shape, only raw data and flags). What never changes after the file is created (prompts, batches,
probes) is read once.

    import ndif_sweep
    s = ndif_sweep.open_sweep("out/demo.h5")
    s.rows                      # valid prompt rows, ascending
    s.acts("resid", 12)         # (n, P, H) of layer 12 for those rows
    for rows, a in s.iter_acts("resid", 12, chunk_rows=4096): ...   # bounded memory
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

FORMAT = "ndif-sweep/1"

#: Stored bytes per chunk of `iter_acts` when no row count is given: whatever the file's shape, a
#: chunk stays this small (analyses widen it to float64, 4x for float16).
CHUNK_BYTES = 32 << 20


class SweepError(Exception):
    """A question a sweep file cannot answer, or a file that cannot be read (the message says which)."""


class NotASweep(SweepError):
    """The file exists but is not an ndif-sweep file (not HDF5, another format, damaged)."""


def _h5py():
    try:
        import h5py  # noqa: PLC0415 (imported on use: `import ndif_sweep` must work without it)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SweepError("reading sweep files needs h5py: pip install h5py (or apt install python3-h5py)") from e
    return h5py


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16, as ndif-sweep stores them) to float32 values, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _runs(rows: np.ndarray) -> List[Tuple[int, int, int]]:
    """(start, stop, offset) of each run of consecutive rows in an ascending array: one hyperslab
    read per run instead of h5py's point selection, which is slow for many rows."""
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [rows.size]))
    return [(int(rows[a]), int(rows[b - 1]) + 1, int(a)) for a, b in zip(starts, stops)]


def _strings(values) -> List[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class Sweep:
    """One output file. Every property that depends on progress re-reads the flags (reopening the
    file), so a `Sweep` of a live file sees the rows written since the last look."""

    def __init__(self, path):
        self.path = Path(path)
        h5py = _h5py()
        if not self.path.exists():
            raise SweepError(f"{self.path}: no such file")
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise NotASweep(f"{self.path}: not an HDF5 file ({e}); is it an ndif-sweep output file?") from e
        with f:
            fmt = f.attrs.get("format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode("utf-8", "replace")
            if fmt != FORMAT:
                raise NotASweep(
                    f"{self.path}: not an ndif-sweep file (format attribute {fmt!r}, expected {FORMAT!r})")
            for name in ("prompts/batch", "batches/done", "prompts/text", "prompts/id", "prompts/meta",
                         "prompts/positions", "acts"):
                if name not in f:
                    raise NotASweep(f"{self.path}: /{name} is missing; the file is damaged or was not "
                                     f"written by ndif-sweep")
            self.model = _strings([f.attrs.get("model", "")])[0]
            self.job = json.loads(_strings([f.attrs.get("job", "{}")])[0])
            self._batch = f["prompts/batch"][...].astype(np.int64)
            self.n_prompts = int(self._batch.size)
            self.n_batches = int(f["batches/done"].shape[0])
            self._probes: Dict[str, List[int]] = {}
            self._dtypes: Dict[str, str] = {}
            for name, ds in f["acts"].items():
                self._probes[name] = [int(x) for x in np.asarray(ds.attrs["layers"]).ravel()]
                self._dtypes[name] = _strings([ds.attrs.get("dtype", str(ds.dtype))])[0]
            self.hidden = {name: int(f["acts"][name].shape[3]) for name in self._probes}
            self.n_positions = int(f["prompts/positions"].shape[1])
        self._text: Optional[List[str]] = None
        self._id: Optional[List[str]] = None
        self._meta: Optional[List[dict]] = None
        self._positions: Optional[np.ndarray] = None

    # Progress: read at every look.

    def done(self) -> np.ndarray:
        """The batch flags as they are now (bool, one per batch)."""
        with _h5py().File(self.path, "r") as f:
            return self._flags(f)

    @staticmethod
    def _flags(f) -> np.ndarray:
        return f["batches/done"][...].astype(bool)

    @property
    def rows(self) -> np.ndarray:
        """The valid prompt rows (int64, ascending): those whose batch is flagged done, now."""
        return self._valid_rows(self.done())

    def _valid_rows(self, done: np.ndarray) -> np.ndarray:
        return np.flatnonzero(done[self._batch]).astype(np.int64)

    @property
    def complete(self) -> bool:
        return bool(self.done().all())

    # What never changes.

    @property
    def probes(self) -> Dict[str, List[int]]:
        """{probe name: [layer numbers]} in dataset order."""
        return {k: list(v) for k, v in self._probes.items()}

    def layers(self, probe: str) -> List[int]:
        """The layer numbers of one probe, in dataset order (an error naming the probe if unknown)."""
        self._layer_index(probe, None)
        return list(self._probes[probe])

    def dtype(self, probe: str) -> str:
        """The stored dtype name of a probe: float16, bfloat16 or float32."""
        self._layer_index(probe, None)
        return self._dtypes[probe]

    def _layer_index(self, probe: str, layer: Optional[int]) -> int:
        if probe not in self._probes:
            raise SweepError(f"{self.path}: no probe {probe!r}; the file has {sorted(self._probes)}")
        if layer is None:
            return -1
        layers = self._probes[probe]
        if layer not in layers:
            raise SweepError(f"{self.path}: probe {probe!r} has no layer {layer}; its layers are {layers}")
        return layers.index(layer)

    def _chosen(self, rows, done: np.ndarray) -> np.ndarray:
        """The valid rows under the flags `done`, or `rows` once each is known to be valid."""
        if rows is None:
            return self._valid_rows(done)
        asked = np.asarray(rows, dtype=np.int64).ravel()
        outside = (asked < 0) | (asked >= self.n_prompts)
        if outside.any():
            r = int(asked[np.argmax(outside)])
            raise SweepError(f"{self.path}: row {r} is out of range (the file has {self.n_prompts} rows)")
        invalid = ~done[self._batch[asked]]
        if invalid.any():
            r = int(asked[np.argmax(invalid)])
            raise SweepError(f"{self.path}: row {r} is not valid yet: its batch {int(self._batch[r])} is not "
                             f"done (ask for rows from Sweep.rows)")
        return asked

    def _read(self, ds, rows: np.ndarray, layer_index: int) -> np.ndarray:
        """ds[rows, layer_index] for any rows (any order, repeats allowed), read run by run."""
        order = np.argsort(rows, kind="stable")
        ascending = rows[order]
        unique, inverse = np.unique(ascending, return_inverse=True)
        out = np.empty((unique.size,) + ds.shape[2:], dtype=ds.dtype)
        for start, stop, offset in _runs(unique):
            out[offset:offset + stop - start] = ds[start:stop, layer_index]
        result = np.empty((rows.size,) + ds.shape[2:], dtype=ds.dtype)
        result[order] = out[inverse]
        return result

    def _read_all_layers(self, ds, rows: np.ndarray) -> np.ndarray:
        """ds[rows] (every layer) for ascending unique rows, run by run."""
        out = np.empty((rows.size,) + ds.shape[1:], dtype=ds.dtype)
        if rows.size and np.all(np.diff(rows) > 0):
            for start, stop, offset in _runs(rows):
                out[offset:offset + stop - start] = ds[start:stop]
            return out
        return np.stack([self._read(ds, rows, j) for j in range(ds.shape[1])], axis=1)

    def _convert(self, probe: str, data: np.ndarray) -> np.ndarray:
        return bfloat16_to_float32(data) if self._dtypes[probe] == "bfloat16" else data

    def acts(self, probe: str, layer: int, rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """(n, P, H) activations of one layer of a probe for the valid rows, or for `rows` (each of
        which must be valid: an error names the first that is not). float16 and float32 as stored,
        bfloat16 as float32. Reads everything asked for at once: see `iter_acts` for bounded memory."""
        li = self._layer_index(probe, layer)
        with _h5py().File(self.path, "r") as f:
            chosen = self._chosen(rows, self._flags(f))
            return self._convert(probe, self._read(f["acts"][probe], chosen, li))

    def iter_acts(self, probe: str, layer: Optional[int] = None, rows: Optional[Sequence[int]] = None,
                  chunk_rows: Optional[int] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Yields (rows, data) for the valid rows (or `rows`) in chunks of at most `chunk_rows` rows
        (default: as many as fit in CHUNK_BYTES), so that memory stays bounded whatever the file's
        size. data is (n, P, H) for one layer, or (n, L, P, H) for all layers of the probe when
        `layer` is None: reading all layers of a chunk of rows at once matches the file's chunks
        (rows x all layers), whereas one layer at a time reads every chunk once per layer. The
        valid rows are fixed when iteration starts; the file stays open while it runs."""
        li = self._layer_index(probe, layer)
        with _h5py().File(self.path, "r") as f:
            chosen = self._chosen(rows, self._flags(f))
            ds = f["acts"][probe]
            if chunk_rows is None:
                row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:] if layer is None else ds.shape[2:]))
                chunk_rows = max(1, CHUNK_BYTES // max(1, row_bytes))
            if chunk_rows < 1:
                raise SweepError("chunk_rows must be at least 1")
            for i in range(0, chosen.size, chunk_rows):
                part = chosen[i:i + chunk_rows]
                if layer is None:
                    data = self._read_all_layers(ds, part)
                else:
                    data = self._read(ds, part, li)
                yield part, self._convert(probe, data)

    # Per-prompt datasets, for the valid rows (or given rows).

    def _load_prompts(self):
        if self._text is None:
            with _h5py().File(self.path, "r") as f:
                self._text = _strings(f["prompts/text"][...])
                self._id = _strings(f["prompts/id"][...])
                self._meta = [json.loads(m) if m else {} for m in _strings(f["prompts/meta"][...])]
                self._positions = f["prompts/positions"][...].astype(np.int64)

    def _pick(self, rows):
        return self._chosen(rows, self.done())

    @property
    def ids(self) -> List[str]:
        """The prompts' ids for `rows`."""
        self._load_prompts()
        return [self._id[r] for r in self.rows]

    @property
    def texts(self) -> List[str]:
        """The prompts' texts for `rows`."""
        self._load_prompts()
        return [self._text[r] for r in self.rows]

    @property
    def positions(self) -> np.ndarray:
        """(n, P) token positions (in the unpadded sequence) for `rows`."""
        self._load_prompts()
        return self._positions[self.rows]

    def meta(self, field: str, rows: Optional[Sequence[int]] = None) -> List:
        """The values of one field of the prompts' `meta` objects for `rows` (None where a prompt
        has no such field)."""
        self._load_prompts()
        return [self._meta[r].get(field) for r in self._pick(rows)]

    def __repr__(self) -> str:
        done = self.done()
        return (f"Sweep({str(self.path)!r}: {self.model}, {self.n_prompts} prompts, "
                f"{int(done.sum())}/{done.size} batches done, probes {self.probes})")


def open_sweep(path) -> Sweep:
    """Opens an ndif-sweep output file: complete, partial or live."""
    return Sweep(path)
