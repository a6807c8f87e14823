"""`ndif-sweep report FILE.h5 --by FIELD --to DIR`: PNGs of the standard analyses and one
self-contained HTML page (the PNGs inline, the file's status), for a quick look from a login node.
Works on partial and live files: it reports on the rows valid when it starts.

    python3 -m ndif_sweep.report out/demo.h5 --by kind --to out/report

Exit codes as `ndif-sweep`'s: 2 bad arguments (an unknown probe, a meta field without two values),
4 a file that is not an ndif-sweep file; 0 with the page written.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path

import numpy as np

from . import analyze
from .sweep import NotASweep, SweepError, open_sweep


def _pick_layer(layers):
    return layers[len(layers) // 2]


def make_report(path, by: str, to, probes=None, position: int = 0, kind: str = "ridge") -> Path:
    """Writes the PNGs and index.html into `to`; returns the page's path."""
    from . import plots  # noqa: PLC0415 (matplotlib only here)

    sweep = open_sweep(path)
    out = Path(to)
    rows = sweep.rows
    if rows.size == 0:
        raise SweepError(f"{sweep.path}: no batch is done yet; there is nothing to report")
    if not 0 <= position < sweep.n_positions:
        raise SweepError(f"--position {position}: the file has {sweep.n_positions} positions per prompt")
    chosen = list(sweep.probes) if not probes else list(probes)
    for p in chosen:
        if p not in sweep.probes:
            raise SweepError(f"--probe {p}: the file has no such probe; it has {sorted(sweep.probes)}")
    g = analyze.groups(sweep, by, rows=rows)
    a, b = g.values
    out.mkdir(parents=True, exist_ok=True)  # only once the arguments are known to be good
    figures = []  # (title, png path)
    for probe in chosen:
        layers = sweep.probes[probe]
        norms = analyze.layer_norms(sweep, probe, rows=rows)
        figures.append((f"{probe}: mean norm", plots.norms(layers, norms, out / f"{probe}_norms.png", probe)))
        ma = analyze.group_means(sweep, probe, g.rows[0], position)
        mb = analyze.group_means(sweep, probe, g.rows[1], position)
        cos = analyze.cosine_similarity(ma, mb)
        figures.append((f"{probe}: cosine of group means",
                        plots.cosine(layers, cos, out / f"{probe}_cosine.png", probe, (a, b))))
        figures.append((f"{probe}: distance of group means",
                        plots.separation(layers, np.linalg.norm(ma - mb, axis=-1),
                                         out / f"{probe}_separation.png", probe, (a, b))))
        layer = _pick_layer(layers)
        pca = analyze.pca2(sweep, probe, layer, position, rows=rows)
        labels = sweep.meta(by, pca.rows)
        figures.append((f"{probe}: PCA of layer {layer}",
                        plots.pca_scatter(pca.coords, labels, out / f"{probe}_pca_layer{layer}.png",
                                          f"{probe} layer {layer}, position {position}: PCA by {by}",
                                          pca.explained)))
        result = analyze.linear_probe(sweep, probe, by, kind=kind, position=position)
        figures.append((f"{probe}: {kind} probe accuracy",
                        plots.probe_accuracy(layers, result.accuracy, out / f"{probe}_probe.png", probe, by, kind,
                                             chance=1.0 / len(result.classes))))
    summary = analyze.summary(sweep)
    page = out / "index.html"
    page.write_text(_html(summary, by, g, position, figures), encoding="utf-8")
    return page


def _html(summary, by, g, position, figures) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in [
        ("file", summary["path"]), ("model", summary["model"]), ("prompts", summary["prompts"]),
        ("batches done", f"{summary['batches_done']} / {summary['batches']}"),
        ("valid rows", summary["valid_rows"]), ("probes", summary["probes"]), ("dtype", summary["dtype"]),
        ("groups", f"{by} = {g.values[0]!r}: {g.rows[0].size} rows; {by} = {g.values[1]!r}: {g.rows[1].size} rows"),
        ("position index", position)])
    images = "".join(
        f"<figure><img alt=\"{e(t)}\" src=\"data:image/png;base64,"
        f"{base64.b64encode(Path(p).read_bytes()).decode('ascii')}\"><figcaption>{e(t)}</figcaption></figure>"
        for t, p in figures)
    partial = "" if summary["batches_done"] == summary["batches"] else (
        "<p><b>Partial file:</b> these figures use only the rows written so far.</p>")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>ndif-sweep report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}figure{display:inline-block;"
            "margin:1em}img{max-width:640px}</style></head><body><h1>ndif-sweep report</h1>"
            f"<table>{rows}</table>{partial}{images}</body></html>")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ndif-sweep report", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="output HDF5 file (complete, partial or live)")
    parser.add_argument("--by", required=True, help="meta field with two values that splits the rows")
    parser.add_argument("--to", required=True, help="directory for the PNGs and index.html")
    parser.add_argument("--probe", action="append", help="probe to report (default: every probe)")
    parser.add_argument("--position", type=int, default=0, help="index into the file's positions (default 0)")
    parser.add_argument("--kind", choices=("ridge", "logistic"), default="ridge", help="linear probe kind")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        page = make_report(args.file, args.by, args.to, args.probe, args.position, args.kind)
    except SweepError as e:
        print(f"ndif-sweep: error: {e}", file=sys.stderr)
        return 4 if isinstance(e, NotASweep) else 2
    except ImportError as e:
        print(f"ndif-sweep: error: report needs matplotlib ({e}); pip install matplotlib "
              f"(or apt install python3-matplotlib)", file=sys.stderr)
        return 2
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
