#!/usr/bin/env python3
"""Writes the Unicode corpora of the tokenizer's differential test, one JSON string per line.

usage: .venv/bin/python gen_unicode_corpus.py OUT_DIR [--seed N]

Needs unicodedata2 16.0.0 (tests/python/requirements.txt): the corpora draw from every code point
assigned in Unicode 16.0, the version of the reference's pre-tokenizer classes, whatever Unicode
this Python or the system's libraries know. Files written to OUT_DIR:

- alone.jsonl: every assigned code point alone on its line (private-use planes 15 and 16, whose
  131,068 characters share one set of properties, in runs of 64 consecutive code points);
- contexts.jsonl: every assigned code point inside a word (after and before letters), after a
  digit, a combining mark, spaces, a newline and an apostrophe, before spaces and CJK, doubled and
  before a contraction;
- runs.jsonl: long runs of one general category (every category, lengths 1 to 300), of digits of
  one script, of marks, of white space of every kind, and of two alternating categories; and
  contractions in every case, with the letters that case folding maps to ASCII ones;
- normalization.jsonl: composition exclusions and singletons alone and after a base; canonical
  reordering of long random mark sequences; every Hangul syllable, and jamo sequences (L V, L V T,
  LV T, broken ones); every character with a compatibility decomposition alone and inside a word;
  decomposed text next to precomposed text.
"""
import argparse
import json
import os
import random
import sys

import unicodedata2 as ud

LIMIT = 0x110000
PRIVATE_PLANES = range(0xF0000, LIMIT)


def assigned():
    return [c for c in range(LIMIT) if ud.category(chr(c)) not in ("Cn", "Cs")]


def write(out_dir, name, strings):
    with open(os.path.join(out_dir, name + ".jsonl"), "w") as f:
        for s in strings:
            f.write(json.dumps(s, ensure_ascii=True) + "\n")
    return len(strings)


def alone(codes):
    out = [chr(c) for c in codes if c not in PRIVATE_PLANES]
    private = [c for c in codes if c in PRIVATE_PLANES]
    out += ["".join(map(chr, private[k:k + 64])) for k in range(0, len(private), 64)]
    return out


def contexts(codes):
    out = []
    for c in codes:
        if c in PRIVATE_PLANES and c % 97:
            continue  # a sample of the private planes, whose characters are all alike
        x = chr(c)
        out.append(f"a{x}b 4{x}\u0301{x}  {x}{x}'s'{x}\n{x}\u4e2d")
    return out


def runs(codes, rng):
    by_category = {}
    for c in codes:
        by_category.setdefault(ud.category(chr(c)), []).append(c)
    out = []
    for category, members in sorted(by_category.items()):
        for length in (1, 2, 3, 4, 5, 7, 16, 64, 300):
            for _ in range(6):
                out.append("".join(chr(rng.choice(members)) for _ in range(length)))
    categories = sorted(by_category)
    for _ in range(3000):
        a, b = rng.sample(categories, 2)
        out.append("".join(chr(rng.choice(by_category[a if k % rng.randint(1, 4) else b])) for k in range(40)))
    # Digits of one script: each decimal block of Nd holds ten consecutive digits.
    digits = by_category["Nd"]
    for start in [d for d in digits if ud.digit(chr(d)) == 0]:
        for length in (1, 2, 3, 4, 6, 10):
            out.append("".join(chr(start + rng.randrange(10)) for _ in range(length)))
            out.append("x" + "".join(chr(start + rng.randrange(10)) for _ in range(length)) + " 1")
    marks = [c for c in codes if ud.category(chr(c)).startswith("M")]
    for _ in range(2000):
        out.append(rng.choice(["", "a", " ", "1", "\u05d0", "\n"]) +
                   "".join(chr(rng.choice(marks)) for _ in range(rng.randint(1, 20))))
    spaces = [c for c in range(LIMIT) if chr(c).isspace() or c in (0x85, 0x1C, 0x1D, 0x1E, 0x1F)]
    for _ in range(2000):
        run = "".join(chr(rng.choice(spaces)) for _ in range(rng.randint(1, 12)))
        out.append(rng.choice(["", "a", "!", "1"]) + run + rng.choice(["", "b", "?", "2", "\u0301"]))
    # Contractions in every case, with letters that fold to ASCII ones (U+017F, U+212A) and ligatures.
    letters = ["s", "S", "t", "T", "re", "RE", "rE", "ve", "VE", "m", "M", "ll", "LL", "lL", "d", "D", "\u017f",
               "\u212a", "\ufb06", "\ufb05", "\u1e9e", "\u0131", "\u0130", "x", ""]
    for a in letters:
        for b in ["", "s", "a", " ", "'", "\u0301", "1"]:
            out += [f"it'{a}{b}", f"'{a}{b}", f"A'{a}{b}", f"\u00e9'{a}{b}", f" '{a}{b}", f"\u0301'{a}{b}"]
    return out


def normalization(codes, rng):
    out = []
    canonical = [c for c in codes if ud.decomposition(chr(c)) and not ud.decomposition(chr(c)).startswith("<")]
    # Composition exclusions and singletons: decomposable, yet NFC does not give them back.
    excluded = [c for c in canonical if ud.normalize("NFC", chr(c)) != chr(c)]
    for c in excluded:
        x = chr(c)
        out += [x, "a" + x, x + "\u0301", ud.normalize("NFD", x), "e" + x + "\u0327\u0301"]
    marks = [c for c in codes if ud.combining(chr(c))]
    bases = ["a", "e", "o", "u", "A", "\u05d0", "\u0915", "\u3131", "\u1100", "\u03b1", "\u0430", "i", "n", "s", " "]
    for _ in range(6000):
        sequence = [chr(rng.choice(marks)) for _ in range(rng.randint(2, 12))]
        out.append(rng.choice(bases) + "".join(sequence) + rng.choice(["", "b", " c", "\u0301"]))
    for c in canonical:  # every canonical decomposition, composed and decomposed, beside others
        x = chr(c)
        out.append(f"{x} {ud.normalize('NFD', x)}b{x}{x}")
    out += [chr(c) for c in range(0xAC00, 0xD7A4)]
    leads = [chr(c) for c in range(0x1100, 0x1113)]
    vowels = [chr(c) for c in range(0x1161, 0x1176)]
    trails = [chr(c) for c in range(0x11A8, 0x11C3)]
    lv = [chr(0xAC00 + 28 * k) for k in range(19 * 21)]
    for _ in range(4000):
        shape = rng.randrange(6)
        if shape == 0:
            out.append(rng.choice(leads) + rng.choice(vowels))
        elif shape == 1:
            out.append(rng.choice(leads) + rng.choice(vowels) + rng.choice(trails))
        elif shape == 2:
            out.append(rng.choice(lv) + rng.choice(trails) + rng.choice(trails))
        elif shape == 3:
            out.append(rng.choice(trails) + rng.choice(vowels) + rng.choice(leads))
        elif shape == 4:
            out.append(chr(rng.randrange(0xAC00, 0xD7A4)) + rng.choice(trails) + "\u0301" + rng.choice(vowels))
        else:
            out.append("".join(rng.choice(leads + vowels + trails + lv) for _ in range(rng.randint(2, 10))))
    compat = [c for c in codes if ud.decomposition(chr(c)).startswith("<")]
    for c in compat:
        x = chr(c)
        out += [x, f"ab{x}cd {x}\u0301 1{x}2"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if ud.unidata_version != "16.0.0":
        sys.exit(f"gen_unicode_corpus.py: unicodedata2 has Unicode {ud.unidata_version}; install unicodedata2==16.0.0")
    os.makedirs(args.out_dir, exist_ok=True)
    rng = random.Random(args.seed)
    codes = assigned()
    counts = {
        "alone": write(args.out_dir, "alone", alone(codes)),
        "contexts": write(args.out_dir, "contexts", contexts(codes)),
        "runs": write(args.out_dir, "runs", runs(codes, rng)),
        "normalization": write(args.out_dir, "normalization", normalization(codes, rng)),
    }
    print(json.dumps({"assigned": len(codes), **counts}))


if __name__ == "__main__":
    main()
