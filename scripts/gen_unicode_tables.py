#!/usr/bin/env python3
"""Generates src/tokenizer/unicode_tables.inc, the tokenizer's Unicode data.

usage: .venv/bin/python scripts/gen_unicode_tables.py [OUT]

The reference tokenizer (Hugging Face's `tokenizers`, npm 0.23.2 and PyPI 0.22.2 alike) uses two
Unicode versions, measured over every code point (docs/tokenizer-unicode.md):

- its pre-tokenizer regexes classify characters by Unicode 16.0 (general categories, White_Space);
- its normalizers (NFC, NFD, NFKC, NFKD) use Unicode 9.0 tables: a character assigned after 9.0
  has no decomposition and combining class 0 for them.

So the tables are: the general category of every code point from Unicode 16.0, and the
normalization data (combining classes, canonical and compatibility decompositions, primary
compositions) of the characters assigned in Unicode 9.0. Unicode's stability policy makes the
second set exact: a character's decomposition and combining class never change once assigned,
so the 16.0 data restricted to the characters of 9.0 is the 9.0 data.

Sources, both from this machine: PyPI's unicodedata2 16.0.0 (tests/python/requirements.txt puts
it in .venv) and the character ages in Perl's Unicode::UCD (any Perl whose Unicode is 9.0 or later).
The output is committed; run this again only to change versions.
"""
import os
import subprocess
import sys

import unicodedata2 as ud

UNICODE_CLASSES = "16.0.0"
UNICODE_NORMALIZATION = "9.0"
BLOCK_SHIFT = 7
BLOCK = 1 << BLOCK_SHIFT
LIMIT = 0x110000

# The order of the C++ enum GeneralCategory in unicode.hpp.
CATEGORIES = ["Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
              "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"]

# Flags of the normalization table.
HAS_CANONICAL = 1   # a canonical decomposition (NFD changes the character)
HAS_COMPAT = 2      # a compatibility decomposition that differs from the canonical one
COMPOSES_SECOND = 4  # the second character of some primary composition (NFC may merge it)


def assigned_in(version):
    """Code points assigned in Unicode `version`, from Perl's Unicode::UCD (Present_In)."""
    script = f'use Unicode::UCD qw(prop_invlist); print join(",", prop_invlist("In={version}"));'
    edges = [int(x) for x in subprocess.run(["perl", "-e", script], capture_output=True, text=True,
                                            check=True).stdout.split(",") if x]
    if not edges:
        sys.exit(f"Perl's Unicode::UCD does not know Unicode {version}")
    present = bytearray(LIMIT)
    for k in range(0, len(edges), 2):
        last = edges[k + 1] if k + 1 < len(edges) else LIMIT
        present[edges[k]:last] = b"\x01" * (last - edges[k])
    return present


def two_stage(values, name, ctype):
    """A table of one byte per code point as an index of blocks and the distinct blocks."""
    blocks, index = {}, []
    for first in range(0, LIMIT, BLOCK):
        block = bytes(values[first:first + BLOCK])
        index.append(blocks.setdefault(block, len(blocks)))
    lines = [f"inline constexpr {ctype} k{name}Index[{len(index)}] = {{"]
    lines += wrap(index)
    lines.append("};")
    lines.append(f"inline constexpr std::uint8_t k{name}Blocks[{len(blocks) * BLOCK}] = {{")
    lines += wrap([v for block in blocks for v in block])
    lines.append("};")
    return lines, len(blocks)


def wrap(numbers, width=100):
    out, line = [], "    "
    for n in numbers:
        item = f"{n},"
        if len(line) + len(item) > width:
            out.append(line.rstrip())
            line = "    "
        line += item
    if line.strip():
        out.append(line.rstrip())
    return out


def hangul(c):
    return 0xAC00 <= c <= 0xD7A3


def main():
    if ud.unidata_version != UNICODE_CLASSES:
        sys.exit(f"unicodedata2 has Unicode {ud.unidata_version}; install unicodedata2=={UNICODE_CLASSES}")
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "src", "tokenizer", "unicode_tables.inc")
    old = assigned_in(UNICODE_NORMALIZATION)

    category = bytearray(LIMIT)
    ccc = bytearray(LIMIT)
    flags = bytearray(LIMIT)
    canonical, compat = {}, {}  # full (recursive) decompositions of the 9.0 characters
    for c in range(LIMIT):
        ch = chr(c)
        category[c] = CATEGORIES.index(ud.category(ch))
        if not old[c] or hangul(c):
            continue  # Hangul syllables decompose by arithmetic, not by table
        ccc[c] = ud.combining(ch)
        nfd, nfkd = ud.normalize("NFD", ch), ud.normalize("NFKD", ch)
        if nfd != ch:
            canonical[c] = [ord(x) for x in nfd]
            flags[c] |= HAS_CANONICAL
        if nfkd != nfd:
            compat[c] = [ord(x) for x in nfkd]
            flags[c] |= HAS_COMPAT

    # Primary composites: a canonical pair decomposition that NFC composes back (not excluded,
    # not a singleton, not starting with a non-starter).
    compositions = []
    for c in range(LIMIT):
        if not old[c] or hangul(c):
            continue
        fields = ud.decomposition(chr(c)).split()
        if len(fields) != 2 or fields[0].startswith("<"):
            continue
        first, second = (int(x, 16) for x in fields)
        if ud.normalize("NFC", chr(c)) == chr(c):
            compositions.append((first, second, c))
            flags[second] |= COMPOSES_SECOND
    compositions.sort()

    pool, entries = [], []
    for c in sorted(set(canonical) | set(compat)):
        can = canonical.get(c, [])
        com = compat.get(c, can)
        entries.append((c, len(pool), len(can), len(pool) + len(can), len(com)))
        pool += can
        pool += com

    category_lines, category_blocks = two_stage(category, "Category", "std::uint16_t")
    ccc_lines, ccc_blocks = two_stage(ccc, "CombiningClass", "std::uint16_t")
    flag_lines, flag_blocks = two_stage(flags, "NormalizationFlags", "std::uint16_t")
    lines = [
        "// Generated by scripts/gen_unicode_tables.py; do not edit.",
        f"// General categories: Unicode {UNICODE_CLASSES}.",
        f"// Normalization data: the characters assigned in Unicode {UNICODE_NORMALIZATION}.",
        f"// {category_blocks} category blocks, {ccc_blocks} combining-class blocks, {flag_blocks} flag blocks,",
        f"// {len(entries)} decompositions ({len(pool)} code points), {len(compositions)} compositions.",
        "// NOLINTBEGIN",
        f"inline constexpr int kBlockShift = {BLOCK_SHIFT};",
        f"inline constexpr std::uint8_t kHasCanonical = {HAS_CANONICAL};",
        f"inline constexpr std::uint8_t kHasCompat = {HAS_COMPAT};",
        f"inline constexpr std::uint8_t kComposesSecond = {COMPOSES_SECOND};",
    ]
    lines += category_lines + ccc_lines + flag_lines
    lines.append("struct DecompositionEntry {\n  char32_t code;\n  std::uint32_t canonical_at;\n"
                 "  std::uint8_t canonical_length;\n  std::uint32_t compat_at;\n  std::uint8_t compat_length;\n};")
    lines.append(f"inline constexpr DecompositionEntry kDecompositions[{len(entries)}] = {{")
    lines += ["    {" + ",".join(str(v) for v in e) + "}," for e in entries]
    lines.append("};")
    lines.append(f"inline constexpr char32_t kDecompositionPool[{len(pool)}] = {{")
    lines += wrap(pool)
    lines.append("};")
    lines.append("struct CompositionEntry {\n  char32_t first;\n  char32_t second;\n  char32_t composite;\n};")
    lines.append(f"inline constexpr CompositionEntry kCompositions[{len(compositions)}] = {{")
    lines += ["    {" + ",".join(str(v) for v in e) + "}," for e in compositions]
    lines.append("};")
    lines.append("// NOLINTEND")
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out_path}: {os.path.getsize(out_path)} bytes")


if __name__ == "__main__":
    main()
