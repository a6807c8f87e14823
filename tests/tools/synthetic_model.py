"""Independent NumPy implementation of ndif-local's synthetic model (docs/protocol.md, the synthetic model).

Integration tests import this module to compute, bit for bit, what ndif-local returns:

    from synthetic_model import activations
    bits = activations([128000, 791, 8415], "model.layers.3", seed=0, hidden=64,
                       model_dtype="bfloat16", target_dtype="float16")

`activations` returns an array of shape (n_tokens, hidden) holding the exact stored values:
float16 or float32 arrays for those dtypes, and uint16 bit patterns for bfloat16.

Run as a script it prints one JSON line per query read from stdin
({"tokens": [...], "module": str, "seed": int, "hidden": int, "model_dtype": str,
"target_dtype": str}) with {"bits": [[...]]} as unsigned integer bit patterns, which is how the
C++ implementation is cross-checked.
"""

import json
import sys

import numpy as np

_MASK = (1 << 64) - 1


def _mix(x):
    """SplitMix64 finaliser on a uint64 array; NumPy uint64 arithmetic wraps modulo 2^64."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def module_code(path):
    """FNV-1a 64 of the UTF-8 bytes of the module path (no leading dot)."""
    code = 0xCBF29CE484222325
    for byte in path.encode("utf-8"):
        code = ((code ^ byte) * 0x100000001B3) & _MASK
    return code


def prefix_states(tokens, seed):
    """h(0..n-1) for the unpadded token ids of one prompt."""
    h = np.uint64((seed ^ 0x9E3779B97F4A7C15) & _MASK)
    states = []
    for token in tokens:
        h = _mix(np.uint64(h) ^ np.uint64((int(token) + 1) & _MASK))[()]
        states.append(h)
    return np.array(states, dtype=np.uint64)


def raw_values(tokens, module, seed, hidden):
    """float32 array (n, hidden) of u * 2^-23 - 1."""
    h = prefix_states(tokens, seed)[:, None]
    with np.errstate(over="ignore"):
        j_mix = _mix(np.uint64(module_code(module)) + np.arange(hidden, dtype=np.uint64))[None, :]
    u = _mix(h ^ j_mix) >> np.uint64(40)
    # u < 2^24: exact in float64 and in float32.
    return (u.astype(np.float64) * 2.0**-23 - 1.0).astype(np.float32)


def _to_bfloat16_bits(values):
    """float32 -> bfloat16 bits with round to nearest even (values here are never NaN)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return rounded.astype(np.uint16)


def _from_bfloat16_bits(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _round(values, dtype):
    """Round float32 values to dtype and widen back to float32."""
    if dtype == "float32":
        return values.astype(np.float32)
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return _from_bfloat16_bits(_to_bfloat16_bits(values))
    raise ValueError(f"unknown dtype {dtype!r}")


def activations(tokens, module, seed=0, hidden=64, model_dtype="bfloat16", target_dtype=None):
    """Values of `module` for every token of one unpadded prompt, shape (n, hidden), held in
    model_dtype and converted (via float32, round to nearest even) to target_dtype."""
    target_dtype = target_dtype or model_dtype
    held = _round(raw_values(tokens, module, seed, hidden), model_dtype)
    if target_dtype == "bfloat16":
        return _to_bfloat16_bits(held)
    if target_dtype == "float16":
        return held.astype(np.float16)
    if target_dtype == "float32":
        return held
    raise ValueError(f"unknown dtype {target_dtype!r}")


def bits(array):
    """Unsigned bit patterns of a float16/float32/uint16 array, as nested Python ints."""
    if array.dtype == np.float16:
        return array.view(np.uint16).tolist()
    if array.dtype == np.float32:
        return array.view(np.uint32).tolist()
    return array.tolist()


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        query = json.loads(line)
        values = activations(query["tokens"], query["module"], query["seed"], query["hidden"],
                             query["model_dtype"], query["target_dtype"])
        print(json.dumps({"bits": bits(values)}))


if __name__ == "__main__":
    main()
