"""Analysis of a sweep in plain numpy (no plotting import), on whatever rows are valid.

Every function takes a `Sweep` and reads it in chunks of rows (`chunk_rows`; by default as many
rows as fit in 32 MiB as stored), so memory is bounded by the chunk and by the result, not by the
file, except `linear_probe`, which holds one position of
one layer of the rows ((n, H) floats) at a time. Sums run in float64.

Activations at one position are vectors of size H; `position` indexes the file's P requested
positions (0 is the first of the job's `positions`). A vector with a NaN or an infinity (float16
overflow) is left out of means and norms and counted by `nonfinite_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .sweep import Sweep, SweepError

CHUNK_ROWS = None  # iter_acts' default: chunks of about sweep.CHUNK_BYTES


def _finite_rows(x: np.ndarray) -> np.ndarray:
    """Mask over the leading axes of x (..., H): vectors with every element finite."""
    return np.isfinite(x).all(axis=-1)


def layer_norms(sweep: Sweep, probe: str, rows: Optional[Sequence[int]] = None,
                chunk_rows: Optional[int] = CHUNK_ROWS) -> np.ndarray:
    """(L,) the mean L2 norm of the activation vectors of each layer, over rows and positions."""
    n_layers = len(sweep.layers(probe))
    total = np.zeros(n_layers)
    count = np.zeros(n_layers)
    for _, data in sweep.iter_acts(probe, None, rows=rows, chunk_rows=chunk_rows):
        x = data.astype(np.float64)  # (n, L, P, H)
        ok = _finite_rows(data)
        norms = np.sqrt(np.einsum("nlph,nlph->nlp", x, x))  # no (n, L, P, H) temporary
        total += np.where(ok, norms, 0).sum(axis=(0, 2))
        count += ok.sum(axis=(0, 2))
    with np.errstate(invalid="ignore"):
        return total / count


def nonfinite_counts(sweep: Sweep, probe: str, rows: Optional[Sequence[int]] = None,
                     chunk_rows: Optional[int] = CHUNK_ROWS) -> np.ndarray:
    """(L,) int64: NaN or infinite values of each layer (float16 overflow shows up here)."""
    counts = np.zeros(len(sweep.layers(probe)), dtype=np.int64)
    for _, data in sweep.iter_acts(probe, None, rows=rows, chunk_rows=chunk_rows):
        counts += (~np.isfinite(data)).sum(axis=(0, 2, 3))
    return counts


@dataclass
class Groups:
    """Two groups of valid rows chosen by the value of one meta field."""
    field: str
    values: tuple
    rows: tuple  # (rows of values[0], rows of values[1]), int64 arrays, ascending


def groups(sweep: Sweep, field: str, a=None, b=None, rows: Optional[Sequence[int]] = None) -> Groups:
    """The valid rows (or `rows`) whose meta `field` equals `a`, and those where it equals `b`.
    Without `a` and `b` the field must have exactly two values among the rows (taken sorted)."""
    chosen = sweep.rows if rows is None else np.asarray(rows, dtype=np.int64)
    values = sweep.meta(field, chosen)
    if a is None or b is None:
        distinct = sorted({v for v in values if v is not None}, key=repr)
        if len(distinct) != 2:
            raise SweepError(f"meta field {field!r} has {len(distinct)} values among the valid rows "
                             f"({distinct[:5]}); name the two groups (a=..., b=...)")
        a, b = distinct
    ga = chosen[np.array([v == a for v in values], dtype=bool)] if len(values) else chosen[:0]
    gb = chosen[np.array([v == b for v in values], dtype=bool)] if len(values) else chosen[:0]
    for value, g in ((a, ga), (b, gb)):
        if g.size == 0:
            raise SweepError(f"no valid row has {field} = {value!r}")
    return Groups(field, (a, b), (ga, gb))


def group_means(sweep: Sweep, probe: str, rows: Sequence[int], position: int = 0,
                chunk_rows: Optional[int] = CHUNK_ROWS) -> np.ndarray:
    """(L, H) the mean activation vector of each layer at one position over `rows` (finite vectors)."""
    total = None
    count = None
    for _, data in sweep.iter_acts(probe, None, rows=rows, chunk_rows=chunk_rows):
        x = data[:, :, position, :].astype(np.float64)  # (n, L, H)
        ok = _finite_rows(x)
        part = np.where(ok[..., None], x, 0).sum(axis=0)
        total = part if total is None else total + part
        count = ok.sum(axis=0) if count is None else count + ok.sum(axis=0)
    return total / count[:, None]


def cosine_similarity(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis (per layer for (L, H) inputs)."""
    return (u * v).sum(axis=-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))


def group_cosine(sweep: Sweep, probe: str, field: str, a=None, b=None, position: int = 0,
                 chunk_rows: Optional[int] = CHUNK_ROWS) -> np.ndarray:
    """(L,) cosine similarity, per layer, between the mean vectors (at one position) of the rows
    with meta `field` = a and those with `field` = b."""
    g = groups(sweep, field, a, b)
    ma = group_means(sweep, probe, g.rows[0], position, chunk_rows)
    mb = group_means(sweep, probe, g.rows[1], position, chunk_rows)
    return cosine_similarity(ma, mb)


@dataclass
class MeanDifference:
    """The difference-of-means direction per layer and every row's projection onto it."""
    groups: Groups
    directions: np.ndarray   # (L, H) unit vectors of mean(a) - mean(b)
    separation: np.ndarray   # (L,) |mean(a) - mean(b)|
    rows: np.ndarray         # (n,) the valid rows projected, ascending
    projections: np.ndarray  # (n, L) each row's vector at `position` dotted with each direction


def mean_difference(sweep: Sweep, probe: str, field: str, a=None, b=None, position: int = 0,
                    chunk_rows: Optional[int] = CHUNK_ROWS) -> MeanDifference:
    """Per layer, the unit direction from the mean of group b to the mean of group a (meta `field`),
    and the projection of every valid row onto it (NaN for a non-finite vector)."""
    g = groups(sweep, field, a, b)
    diff = (group_means(sweep, probe, g.rows[0], position, chunk_rows) -
            group_means(sweep, probe, g.rows[1], position, chunk_rows))
    separation = np.linalg.norm(diff, axis=-1)
    directions = diff / separation[:, None]
    rows = sweep.rows
    projections = np.empty((rows.size, directions.shape[0]))
    done = 0
    for part, data in sweep.iter_acts(probe, None, rows=rows, chunk_rows=chunk_rows):
        x = data[:, :, position, :].astype(np.float64)
        p = np.einsum("nlh,lh->nl", x, directions)
        p[~_finite_rows(x)] = np.nan
        projections[done:done + part.size] = p
        done += part.size
    return MeanDifference(g, directions, separation, rows, projections)


@dataclass
class Pca:
    rows: np.ndarray       # (n,) rows, ascending (rows with a non-finite vector are left out)
    coords: np.ndarray     # (n, 2) coordinates on the first two components
    components: np.ndarray  # (2, H) unit vectors
    explained: np.ndarray  # (2,) share of the total variance of each component
    mean: np.ndarray       # (H,)


def pca2(sweep: Sweep, probe: str, layer: int, position: int = 0, rows: Optional[Sequence[int]] = None,
         chunk_rows: Optional[int] = CHUNK_ROWS) -> Pca:
    """A 2-D PCA of one layer at one position: the covariance is accumulated chunk by chunk (H x H),
    its top two eigenvectors are the components (sign fixed so that the largest coordinate of each
    is positive), and every row is projected in a second pass."""
    n = 0
    total = None
    outer = None
    for _, data in sweep.iter_acts(probe, layer, rows=rows, chunk_rows=chunk_rows):
        x = data[:, position, :].astype(np.float64)
        x = x[_finite_rows(x)]
        n += x.shape[0]
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
        outer = x.T @ x if outer is None else outer + x.T @ x
    if n < 2:
        raise SweepError(f"a PCA needs at least 2 valid rows; {n} are valid")
    mean = total / n
    cov = (outer - n * np.outer(mean, mean)) / (n - 1)
    values, vectors = np.linalg.eigh(cov)
    top = np.argsort(values)[::-1][:2]
    components = vectors[:, top].T
    for c in components:
        if c[np.argmax(np.abs(c))] < 0:
            c *= -1
    explained = values[top] / values.sum()
    kept, coords = [], []
    for part, data in sweep.iter_acts(probe, layer, rows=rows, chunk_rows=chunk_rows):
        x = data[:, position, :].astype(np.float64)
        ok = _finite_rows(x)
        kept.append(part[ok])
        coords.append((x[ok] - mean) @ components.T)
    return Pca(np.concatenate(kept), np.concatenate(coords), components, explained, mean)


@dataclass
class ProbeResult:
    """A linear probe per layer: held-out accuracy of predicting a meta field from the activations."""
    field: str
    kind: str
    layers: List[int]
    accuracy: np.ndarray  # (L,) on the held-out rows
    classes: list
    train_rows: np.ndarray
    test_rows: np.ndarray


def split_rows(rows: np.ndarray, test_fraction: float, seed: int):
    """A seeded random split of rows into (train, test), each ascending."""
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(rows)
    n_test = max(1, int(round(test_fraction * rows.size)))
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])


def _standardize(train: np.ndarray, test: np.ndarray):
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    sd[sd == 0] = 1
    return (train - mu) / sd, (test - mu) / sd


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression weights (with a bias as the last row) for targets y (n, k): solved in the
    dual when there are fewer rows than features."""
    xb = np.hstack([x, np.ones((x.shape[0], 1))])
    n, d = xb.shape
    if n < d:
        return xb.T @ np.linalg.solve(xb @ xb.T + alpha * np.eye(n), y)
    return np.linalg.solve(xb.T @ xb + alpha * np.eye(d), xb.T @ y)


def logistic_fit(x: np.ndarray, labels: np.ndarray, k: int, alpha: float, steps: int = 500,
                 rate: float = 0.5) -> np.ndarray:
    """Multinomial logistic regression with an L2 penalty `alpha`, by full-batch gradient descent
    from zero (deterministic). Weights with the bias as the last row."""
    xb = np.hstack([x, np.ones((x.shape[0], 1))])
    w = np.zeros((xb.shape[1], k))
    onehot = np.eye(k)[labels]
    for _ in range(steps):
        z = xb @ w
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        grad = xb.T @ (p - onehot) / xb.shape[0] + alpha * np.vstack([w[:-1], np.zeros((1, k))])
        w -= rate * grad
    return w


def linear_probe(sweep: Sweep, probe: str, field: str, kind: str = "ridge", position: int = 0,
                 test_fraction: float = 0.25, seed: int = 0, alpha: float = 1.0,
                 layers: Optional[Sequence[int]] = None) -> ProbeResult:
    """Predicts the meta `field` (its distinct values are the classes) from one layer's vector at
    `position`, for each layer: a seeded split of the valid rows (rows with non-finite vectors or no
    value left out), features standardised on the training rows, then ridge regression on one-hot
    targets (`kind="ridge"`, argmax) or multinomial logistic regression (`kind="logistic"`).
    Returns the accuracy on the held-out rows per layer."""
    if kind not in ("ridge", "logistic"):
        raise SweepError(f"linear_probe: kind must be 'ridge' or 'logistic', not {kind!r}")
    rows = sweep.rows
    values = sweep.meta(field, rows)
    has = np.array([v is not None for v in values], dtype=bool)
    rows = rows[has]
    values = [v for v in values if v is not None]
    classes = sorted(set(values), key=repr)
    if len(classes) < 2:
        raise SweepError(f"linear_probe: meta field {field!r} has {len(classes)} value(s) among the valid rows")
    label_of = {c: i for i, c in enumerate(classes)}
    labels = np.array([label_of[v] for v in values])
    chosen_layers = sweep.layers(probe) if layers is None else list(layers)
    train, test = split_rows(np.arange(rows.size), test_fraction, seed)
    if train.size < 2:
        raise SweepError(f"linear_probe: {rows.size} valid rows are too few to hold some out")
    accuracy = np.empty(len(chosen_layers))
    for i, layer in enumerate(chosen_layers):
        x = sweep.acts(probe, layer, rows)[:, position, :].astype(np.float64)
        ok = _finite_rows(x)
        tr, te = train[ok[train]], test[ok[test]]
        xtr, xte = _standardize(x[tr], x[te])
        if kind == "ridge":
            w = ridge_fit(xtr, np.eye(len(classes))[labels[tr]], alpha)
        else:
            # alpha penalises the summed loss, as in ridge; the fit minimises the mean loss.
            w = logistic_fit(xtr, labels[tr], len(classes), alpha / max(1, tr.size))
        predicted = np.argmax(np.hstack([xte, np.ones((xte.shape[0], 1))]) @ w, axis=1)
        accuracy[i] = float((predicted == labels[te]).mean()) if te.size else np.nan
    return ProbeResult(field, kind, chosen_layers, accuracy, classes, rows[train], rows[test])


def summary(sweep: Sweep) -> Dict[str, object]:
    """What `ndif-sweep status` says, from Python: prompts, batches done, valid rows, probes."""
    done = sweep.done()
    return {"path": str(sweep.path), "model": sweep.model, "prompts": sweep.n_prompts,
            "batches": int(done.size), "batches_done": int(done.sum()),
            "valid_rows": int(sweep.rows.size), "probes": sweep.probes,
            "dtype": {p: sweep.dtype(p) for p in sweep.probes}}
