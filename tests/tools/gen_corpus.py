#!/usr/bin/env python3
"""Writes a varied, reproducible corpus of test strings for the tokenizer's differential test.

usage: gen_corpus.py COUNT [--seed N] > strings.jsonl   (one JSON string per line)

The strings mix scripts, marks and spacing that tokenizers treat differently: multilingual words,
CJK, right-to-left text, combining marks, emoji with joiners, whitespace runs, tabs and newlines,
long digit runs, code, URLs, special-token literals, empty and one-character strings.
Random code points are drawn among the characters this Python knows as assigned; every code point
of the reference's Unicode version is in the corpora of gen_unicode_corpus.py.
"""
import argparse
import json
import random
import unicodedata

WORDS = {
    "en": "the cat sat on mat while researchers probe every layer of large language models quickly".split(),
    "de": "Straße über Größe Mädchen schön Fußgänger Übermut".split(),
    "fr": "élève garçon déjà où naïve cœur façade".split(),
    "ru": "Привет мир язык модель слой токен".split(),
    "el": "Καλημέρα κόσμε γλώσσα".split(),
    "zh": ["你好", "世界", "语言模型", "自然语言处理", "中文分词"],
    "ja": ["こんにちは", "世界", "カタカナ", "ひらがな", "東京タワー"],
    "ko": ["안녕하세요", "세계", "한국어", "토큰"],
    "ar": ["مرحبا", "بالعالم", "اللغة", "العربية"],
    "he": ["שלום", "עולם", "שפה"],
    "hi": ["नमस्ते", "दुनिया", "भाषा"],
    "th": ["สวัสดี", "ภาษาไทย"],
    "vi": ["Tiếng", "Việt", "người", "đường"],
}
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>",
            "<unk>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<think>", "</think>", "<pad>", "<mask>",
            "<|eot_id|>", "<|start_header_id|>", "<tool_call>", "<|fim_prefix|>"]
COMBINING = ["\u0301", "\u0300", "\u0308", "\u0327", "\u0323", "\u030A", "\u0302", "\u0303", "\u093F", "\u05B8"]
EMOJI = ["🙂", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇩🇪", "🧑🏿‍💻", "✨", "🤖", "🐍"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00A0", "\u3000", "\u2009", "\u200B", "\t\t  "]
CODE = ["def f(x):\n    return x ** 2", "for (int i = 0; i < n; ++i) {", "std::vector<int> v{1,2,3};",
        "if x != None and y >= 3:", "console.log(`${a}`);", "#include <stdio.h>", "SELECT * FROM t WHERE id=42;",
        "\tfoo_bar = baz[0:10]", "λx. x + 1", "a_b-c.d/e\\f"]
URLS = ["https://example.org/path?q=1&x=y#frag", "http://127.0.0.1:8080/api/v1/", "mailto:someone@example.com",
        "ftp://files.example.net/pub/README.txt", "www.example.co.uk/über"]
ODD = ["ﬁ", "Ⅻ", "①", "ｆｕｌｌｗｉｄｔｈ", "Å", "Ω", "ǅ", "각", "\u1E9B\u0323", "e\u0301\u0301", "\uFB01x", "½",
       "x\u200Dy", "\u2028", "\uFEFF", "\U0001D400", "\U00020000", "\u0000", "\u007F", "'s 'll 'VE 'Re"]


def piece(rng):
    kind = rng.randrange(12)
    if kind == 0:
        return " ".join(rng.choice(WORDS["en"]) for _ in range(rng.randint(1, 8)))
    if kind == 1:
        lang = rng.choice(list(WORDS))
        sep = "" if lang in ("zh", "ja", "th") else " "
        return sep.join(rng.choice(WORDS[lang]) for _ in range(rng.randint(1, 5)))
    if kind == 2:
        return rng.choice(WORDS["en"]) + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 3)))
    if kind == 3:
        return rng.choice(EMOJI) * rng.randint(1, 2)
    if kind == 4:
        return rng.choice(SPACES) * rng.randint(1, 3)
    if kind == 5:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
    if kind == 6:
        return rng.choice(CODE)
    if kind == 7:
        return rng.choice(URLS)
    if kind == 8:
        return rng.choice(SPECIALS)
    if kind == 9:
        return rng.choice(ODD)
    if kind == 10:
        while True:
            c = chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0xD7FF),
                                rng.randint(0xE000, 0xFFFD), rng.randint(0x10000, 0x1FAFF)]))
            if unicodedata.category(c) != "Cn":
                return c
    return rng.choice(["The", "THE", "don't", "it's", "I'M", "e.g.", "U.S.A.", "3.14159", "-1", "$100", "100%"])


def string(rng):
    shape = rng.randrange(20)
    if shape == 0:
        return ""
    if shape == 1:
        return piece(rng)[:1]
    parts = [piece(rng) for _ in range(rng.randint(1, 6))]
    glue = rng.choice(["", " ", " ", "\n", rng.choice(SPACES)])
    return glue.join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for _ in range(args.count):
        print(json.dumps(string(rng), ensure_ascii=True))


if __name__ == "__main__":
    main()
