#!/usr/bin/env python3
"""Writes jobs/demo_prompts.jsonl, the prompts of the demo sweep (jobs/demo.json).

Deterministic: the same file on every run. About 2000 prompts whose lengths run from one token
(the empty prompt, which is only the BOS token) to more than 300 tokens, so that batches mix very
different lengths. Most lines are plain strings and take the job's default positions [-1, 0];
some carry an id, meta data, their own positions, or span positions. Every line resolves to two
positions, as the output format needs the same P for every prompt.

    usage: python3 jobs/make_demo_prompts.py [OUT]     (default: jobs/demo_prompts.jsonl)
"""

import json
import random
import sys
from pathlib import Path

SUBJECTS = ["The cat", "A small dog", "My neighbour", "The old sailor", "Every student", "The committee",
            "A tired engineer", "The river", "Our team", "The violinist", "Grandmother", "The robot"]
VERBS = ["sat on", "looked at", "walked past", "wrote about", "dreamed of", "argued with", "painted",
         "measured", "repaired", "forgot", "found", "carried"]
OBJECTS = ["the mat", "a red bicycle", "the northern lights", "an unfinished letter", "the kitchen table",
           "three silver coins", "the last train", "a quiet library", "the mountain path", "an old photograph"]
CLAUSES = ["because it was raining", "while the bells rang", "before anyone noticed", "after a long winter",
           "as the sun went down", "without saying a word", "in the middle of the night", "for no clear reason"]
EXTRAS = ["Café crème costs 3,50 €.", "東京は大きな都市です。", "Привет, как дела?", "x = f(42) + 7;",
          "See https://example.org/a?b=1 for details.", "🙂 ok!", "αβγ δεζ", "1234567890 0987654321",
          "naïve façade coöperate", "\tTabs\tand  double  spaces."]
QUESTIONS = ["What happened next?", "Why?", "Who was there?", "Where did it go?", "Is that true?"]
CONDITIONS = ["control", "treatment", "filler"]


def sentence(rng: random.Random) -> str:
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.5:
        text += " " + rng.choice(CLAUSES)
    return text + "."


def paragraph(rng: random.Random, sentences: int) -> str:
    parts = []
    for _ in range(sentences):
        parts.append(sentence(rng))
        if rng.random() < 0.15:
            parts.append(rng.choice(EXTRAS))
    if rng.random() < 0.3:
        parts.append(rng.choice(QUESTIONS))
    return " ".join(parts)


def sentence_count(rng: random.Random) -> int:
    """Mostly short prompts, a tail of long ones: about 12 tokens a sentence, so 30 sentences
    make more than 300 tokens."""
    draw = rng.random()
    if draw < 0.55:
        return rng.randint(1, 3)
    if draw < 0.85:
        return rng.randint(4, 10)
    if draw < 0.97:
        return rng.randint(11, 20)
    return rng.randint(24, 32)


def lines(count: int, seed: int):
    rng = random.Random(seed)
    yield ""  # one token: only BOS
    yield "Hi"
    yield "The cat"
    for row in range(3, count):
        text = paragraph(rng, sentence_count(rng))
        kind = rng.random()
        if kind < 0.80:
            yield text
        elif kind < 0.88:
            yield {"prompt": text, "id": f"q{row:05d}",
                   "meta": {"condition": rng.choice(CONDITIONS), "seed": seed}}
        elif kind < 0.94:
            # index positions of its own: the first word's token and the last token
            yield {"prompt": text, "positions": [1, -1], "meta": {"condition": "indexed"}}
        else:
            # a span: the last token of the last "cat" (appended so that it always occurs), then the last token
            text += " The cat agreed."
            yield {"prompt": text, "positions": [{"span": "cat", "occurrence": -1, "token": "last"}, -1],
                   "id": f"span{row:05d}"}


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("demo_prompts.jsonl")
    with open(out, "w", encoding="utf-8", newline="\n") as file:
        for line in lines(2000, seed=20240611):
            file.write(json.dumps(line, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
