#!/usr/bin/env python3
"""Real torch loads what ndif::torchsave::save() writes, value for value and bit for bit.

Usage: check_roundtrip.py WRITER OUT_DIR
Runs WRITER OUT_DIR (which writes *.pt and expected.json), then torch.loads every file and
compares torch's description of it with the writer's. Exits 77 (skipped) when torch is missing.
"""
import json
import pathlib
import subprocess
import sys
import zipfile

try:
    import torch  # noqa: F401
except ImportError:
    print("torch is not importable; skipping")
    sys.exit(77)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))
from make_torch_golden import describe  # noqa: E402


def drop_values(j):
    if isinstance(j, dict):
        if "tensor" in j:
            j["tensor"].pop("values", None)
        for v in j.values():
            drop_values(v)
    elif isinstance(j, list):
        for v in j:
            drop_values(v)
    return j


def requires_grad_anywhere(value):
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(requires_grad_anywhere(v) for v in value)
    if isinstance(value, dict):
        return any(requires_grad_anywhere(v) for v in value.values())
    return False


def main():
    writer, out = sys.argv[1], pathlib.Path(sys.argv[2])
    subprocess.run([writer, str(out)], check=True)
    expected = json.loads((out / "expected.json").read_text(encoding="utf-8"))
    failures = 0
    for name, want in expected.items():
        path = out / name
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad is not None:
                print(f"{name}: CRC error in {bad}")
                failures += 1
            for info in z.infolist():
                with open(path, "rb") as f:
                    f.seek(info.header_offset + 26)
                    lengths = f.read(4)
                start = info.header_offset + 30 + int.from_bytes(lengths[:2], "little") + int.from_bytes(lengths[2:], "little")
                if start % 64 != 0:
                    print(f"{name}: entry {info.filename} starts at unaligned offset {start}")
                    failures += 1
        value = torch.load(path)
        got = drop_values(describe(value, {}))
        if got != want:
            print(f"{name}: torch loaded\n{json.dumps(got)}\nbut the writer saved\n{json.dumps(want)}")
            failures += 1
        if requires_grad_anywhere(value):
            print(f"{name}: a tensor came back with requires_grad")
            failures += 1
    print(f"checked {len(expected)} files, {failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
