#!/usr/bin/env python3
"""Writes the torch.save golden files of the torchsave unit tests with real torch.

Run with a Python that has torch (Debian's /usr/bin/python3 here):
    /usr/bin/python3 tests/tools/make_torch_golden.py
It writes tests/data/torchsave/<name>.pt and expected.json, which describes every file's value as
torch itself sees it, so the C++ reader is checked against torch and not against the C++ writer.

expected.json encodes a value as one-key objects: {"none": null}, {"bool": b}, {"int": i},
{"float": f}, {"str": s}, {"list": [...]}, {"tuple": [...]}, {"dict": [[key, value], ...]} and
{"tensor": {"dtype", "shape", "stride", "offset", "storage_numel", "storage", "hex", "values"}}
where "hex" is the row-major little-endian element bytes, "values" the same elements as numbers,
and "storage" numbers the distinct storages of a file in order of first appearance.
"""
import collections
import json
import math
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "torchsave"

DTYPE_NAMES = {
    torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
    torch.float64: "float64", torch.int64: "int64", torch.int32: "int32", torch.int16: "int16",
    torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
}
# Same-width integer types to read raw element bytes where numpy has no matching dtype.
RAW_VIEW = {torch.bfloat16: torch.int16, torch.bool: torch.uint8}


def number(x):
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)  # "inf", "-inf", "nan": JSON has no literal for them
    return x


def describe(value, storages):
    if value is None:
        return {"none": None}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": number(value)}
    if isinstance(value, str):
        return {"str": value}
    if isinstance(value, torch.Tensor):
        storage = value.storage()
        sid = storages.setdefault(storage._cdata, len(storages))  # data_ptr is 0 for every empty storage
        flat = value.contiguous().reshape(-1)
        raw = flat.view(RAW_VIEW.get(value.dtype, value.dtype)).numpy().tobytes()
        values = flat.float().tolist() if value.is_floating_point() else flat.long().tolist()
        return {"tensor": {
            "dtype": DTYPE_NAMES[value.dtype], "shape": list(value.shape),
            "stride": list(value.stride()), "offset": value.storage_offset(),
            "storage_numel": storage.size(), "storage": sid, "hex": raw.hex(),
            "values": [number(v) for v in values],
        }}
    if isinstance(value, list):
        return {"list": [describe(v, storages) for v in value]}
    if isinstance(value, tuple):
        return {"tuple": [describe(v, storages) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[describe(k, storages), describe(v, storages)] for k, v in value.items()]}
    raise TypeError(f"no description for {type(value)}")


def cases():
    g = torch.Generator().manual_seed(1234)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 4 - 2
    shared = torch.arange(10, dtype=torch.int64) * 7 - 30
    many = torch.randn(120, 3, generator=g).to(torch.float16)
    yield "float16", torch.tensor([[0.0, -1.5, 65504.0], [6.1e-5, float("inf"), -0.0]], dtype=torch.float16)
    yield "bfloat16", (torch.randn(3, 4, generator=g) * 100).to(torch.bfloat16)
    yield "float32", torch.randn(2, 2, 3, generator=g)
    yield "int64", torch.tensor([0, -1, 2**40, -(2**62), 2**63 - 1, 255, 256], dtype=torch.int64)
    yield "other_dtypes", {
        "f64": torch.tensor([1.0 / 3, -2.5e300], dtype=torch.float64),
        "i32": torch.tensor([-2**31, 7], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
    }
    yield "scalar_and_empty", (torch.tensor(3.25), torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64))
    yield "views", {
        "offset": base.reshape(-1)[5:11],
        "transposed": base.t(),
        "column": base[:, 2],
        "strided": base[1:, ::2],
        "broadcast": torch.tensor([1.0, 2.0]).expand(3, 2),
    }
    yield "shared_storage", [shared[2:5], shared.reshape(2, 5), shared[::3]]
    yield "nested", {"id": "abc", "result": {5: torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float16)}}
    yield "containers", [
        None, True, False, 0, 1, -1, 255, 256, 65535, 65536, -2**31, 2**31, 2**63 - 1, -2**63,
        0.5, -1e-300, float("inf"), "", "plain", "ünïcödé ✓ 🙂", (), (1,), (1, 2), (1, 2, 3),
        (1, 2, 3, 4), [], {}, [[[]]], {"a": [1, {"b": (None,)}]},
    ]
    # More than 256 memo entries (LONG_BINPUT/LONG_BINGET) and more than 1000 dict items (several
    # SETITEMS batches), with over a hundred storages in the archive.
    yield "many_entries", {
        "rows": [many[i].clone() for i in range(many.shape[0])],
        "table": {f"k{i}": i * 3 for i in range(1100)},
    }
    yield "parameter", {"weight": torch.nn.Parameter(torch.tensor([0.25, -0.75]))}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, value in cases():
        path = OUT / f"{name}.pt"
        torch.save(value, path)
        assert path.stat().st_size < 100_000, f"{path} is too large for a golden file"
        loaded = torch.load(path)
        expected[f"{name}.pt"] = describe(loaded, {})
    # One file per line keeps the sidecar small and its diffs readable.
    lines = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
             for k, v in expected.items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    assert len(text.encode()) < 100_000, "expected.json is too large for a golden file"
    (OUT / "expected.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
