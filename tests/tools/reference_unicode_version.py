#!/usr/bin/env python3
"""Measures which Unicode versions the reference tokenizer uses, over every code point.

usage: .venv/bin/python tests/tools/reference_unicode_version.py [TOKENIZERS_DIR]
       (default data/tokenizers; needs node, the npm reference there, unicodedata2 and perl)

Pre-tokenizer classes: the code points that the reference's regex matches for \\p{L}, \\p{Lu}, ...,
\\s are compared with the general categories of unicodedata2 (Unicode 16.0 in .venv) and of this
Python's own unicodedata. Normalizers: for every code point whose decomposition (16.0) or combining
class (16.0) the reference does not apply, the Unicode version that assigned it (Perl's
Unicode::UCD ages) is counted, and so for those it applies: the version is where one ends and the
other begins. PyPI's `tokenizers` (in .venv) is asked the same questions about classes and
normalizers and must agree with the npm binding. Prints a Markdown report (docs/tokenizer-unicode.md
has its result).
"""
import bisect
import json
import os
import subprocess
import sys
import tempfile
import unicodedata
from collections import Counter

import unicodedata2
from tokenizers import Regex, normalizers, pre_tokenizers

LIMIT = 0x110000
AGES = ["1.1", "2.0", "2.1", "3.0", "3.1", "3.2", "4.0", "4.1", "5.0", "5.1", "5.2", "6.0", "6.1", "6.2", "6.3",
        "7.0", "8.0", "9.0", "10.0", "11.0", "12.0", "12.1", "13.0", "14.0", "15.0", "15.1", "16.0"]


def ages():
    """Code point -> the Unicode version that assigned it, as far as this Perl knows."""
    script = ('use Unicode::UCD qw(prop_invlist); for my $v (@ARGV) { my @l = prop_invlist("Age=V" . join("_", '
              'split(/\\./, $v))); print "$v ", join(",", @l), "\\n"; }')
    lines = subprocess.run(["perl", "-e", script] + AGES, capture_output=True, text=True, check=True).stdout
    lists = []
    for line in lines.splitlines():
        version, _, edges = line.partition(" ")
        if edges.strip():
            lists.append((version, [int(x) for x in edges.split(",")]))

    def age(c):
        for version, edges in lists:
            if bisect.bisect_right(edges, c) % 2 == 1:
                return version
        return f"after {lists[-1][0]}"
    return age


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "data",
                                                                  "tokenizers")
    here = os.path.dirname(os.path.abspath(__file__))
    codes = [c for c in range(1, LIMIT) if not 0xD800 <= c <= 0xDFFF]
    marks = [[c, unicodedata2.combining(chr(c))] for c in codes if unicodedata2.combining(chr(c))]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(marks, f)
        f.flush()
        probe = json.loads(subprocess.run(["node", os.path.join(here, "probe_reference_unicode.js"), directory, f.name],
                                          capture_output=True, check=True).stdout)
    # PyPI's binding of the same library, asked the same questions in this process.
    everything = "".join(map(chr, codes))
    differ = []
    for cls in [k for k in probe if k.startswith("\\")]:
        split = pre_tokenizers.Split(Regex(cls), behavior="removed", invert=True)
        if [ord(piece) for piece, _ in split.pre_tokenize_str(everything)] != probe[cls]:
            differ.append(cls)
    for form in ("nfc", "nfd", "nfkc", "nfkd"):
        normalizer = getattr(normalizers, form.upper())()
        changed = {}
        for c in codes:
            result = normalizer.normalize_str(chr(c))
            if result != chr(c):
                changed[str(c)] = [ord(x) for x in result]
        if changed != probe[form]:
            differ.append(form)
    import tokenizers
    print(f"PyPI's tokenizers {tokenizers.__version__} and the npm binding agree on every code point: "
          f"{'yes' if not differ else 'no, on ' + ', '.join(differ)}\n")
    print("## Pre-tokenizer classes: code points where the reference and a Unicode version disagree\n")
    tables = [(f"Unicode {unicodedata2.unidata_version} (unicodedata2)", unicodedata2),
              (f"Unicode {unicodedata.unidata_version} (this Python)", unicodedata)]
    print("| class | " + " | ".join(name for name, _ in tables) + " |")
    print("|---|" + "---:|" * len(tables))
    for cls in [k for k in probe if k.startswith("\\")]:
        got = set(probe[cls])
        cells = []
        for _, ud in tables:
            if cls == "\\s":  # White_Space: what str.isspace() accepts but the four separators U+1C..U+1F
                want = {c for c in codes if chr(c).isspace()} - {0x1C, 0x1D, 0x1E, 0x1F}
            else:
                name = cls[3:-1]
                want = {c for c in codes if (ud.category(chr(c)).startswith(name) if len(name) == 1
                                             else ud.category(chr(c)) == name)}
            cells.append(str(len(got ^ want)))
        print(f"| `{cls}` | " + " | ".join(cells) + " |")
    age = ages()
    print("\n## Normalizers: characters with a decomposition in Unicode 16.0, by the version that assigned them\n")
    applied, missing = Counter(), Counter()
    for c in codes:
        if unicodedata2.normalize("NFKD", chr(c)) != chr(c):
            (applied if str(c) in probe["nfkd"] else missing)[age(c)] += 1
    print("| assigned in | decomposed by the reference | left alone |")
    print("|---|---:|---:|")
    for version in sorted(set(applied) | set(missing), key=lambda v: AGES.index(v) if v in AGES else len(AGES)):
        print(f"| {version} | {applied[version]} | {missing[version]} |")
    print("\n## Normalizers: marks with a combining class in Unicode 16.0, by the version that assigned them\n")
    known, zero = Counter(), Counter()
    for c, _ in marks:
        (known if probe["ordered"][str(c)] else zero)[age(c)] += 1
    print("| assigned in | class applied by the reference | class 0 for the reference |")
    print("|---|---:|---:|")
    for version in sorted(set(known) | set(zero), key=lambda v: AGES.index(v) if v in AGES else len(AGES)):
        print(f"| {version} | {known[version]} | {zero[version]} |")


if __name__ == "__main__":
    main()
