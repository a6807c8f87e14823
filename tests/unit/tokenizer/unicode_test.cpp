// The tokenizer's Unicode data and split scanners: the reference's versions (16.0 classes, 9.0
// normalization) whatever the system's libraries know, and scanners that match exactly what PCRE2
// matches for the same pattern over the same classes.
#include "unicode.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/utf8.hpp"
#include "regex.hpp"
#include "split_scanner.hpp"

namespace {

using namespace ndif::tokenizer::detail;

std::string utf8(const std::u32string& text) {
  std::string out;
  for (const char32_t c : text) ndif::append_utf8(out, c);
  return out;
}

std::u32string normalized(const std::u32string& text, NormalForm form) {
  std::u32string out;
  for (const auto& ch : normalize(utf8(text), form)) out.push_back(ch.c);
  return out;
}

TEST(UnicodeTables, CategoriesAreUnicode16) {
  EXPECT_EQ(general_category(U'a'), GeneralCategory::Ll);
  EXPECT_EQ(general_category(U'\u00C9'), GeneralCategory::Lu);
  EXPECT_EQ(general_category(U'\u0301'), GeneralCategory::Mn);
  EXPECT_EQ(general_category(0x1E4D0), GeneralCategory::Lo);  // NAG MUNDARI LETTER O, Unicode 15.0
  EXPECT_EQ(general_category(0x105C0), GeneralCategory::Lo);  // TODHRI LETTER A, Unicode 16.0
  EXPECT_EQ(general_category(0x1CCF0), GeneralCategory::Nd);  // OUTLINED DIGIT ZERO, Unicode 16.0
  EXPECT_EQ(general_category(0x1611E), GeneralCategory::Mn);  // GURUNG KHEMA VOWEL SIGN AA, 16.0
  EXPECT_EQ(general_category(0x0378), GeneralCategory::Cn);   // unassigned
  EXPECT_EQ(general_category(0xE000), GeneralCategory::Co);
  EXPECT_EQ(general_category(0x110000), GeneralCategory::Cn);  // beyond Unicode
}

TEST(UnicodeTables, CombiningClassesAreUnicode9) {
  EXPECT_EQ(combining_class(U'\u0301'), 230);
  EXPECT_EQ(combining_class(U'\u05B7'), 17);
  EXPECT_EQ(combining_class(0x11A47), 0);  // class 9 since Unicode 10.0, after the reference's tables
  EXPECT_EQ(combining_class(0x1E94A), 7);  // ADLAM NUKTA, Unicode 9.0
}

TEST(Normalization, CompositionExclusionsStayDecomposed) {
  EXPECT_EQ(normalized(U"\u2ADC", NormalForm::nfc), U"\u2ADD\u0338");
  EXPECT_EQ(normalized(U"\u0958", NormalForm::nfc), U"\u0915\u093C");  // script-specific exclusion
  EXPECT_EQ(normalized(U"\u212B", NormalForm::nfc), U"\u00C5");        // singleton ANGSTROM SIGN
  EXPECT_EQ(normalized(U"\u0344", NormalForm::nfc), U"\u0308\u0301");  // non-starter decomposition
}

TEST(Normalization, CanonicalOrderFollowsTheReferencesClasses) {
  EXPECT_EQ(normalized(U"a\u0301\u0323", NormalForm::nfd), U"a\u0323\u0301");
  EXPECT_EQ(normalized(U"a\u0301\u0323", NormalForm::nfc), U"\u1EA1\u0301");
  // Unicode 9.0 gives U+11A47 class 0, so the reference leaves this pair as it is.
  EXPECT_EQ(normalized(U"\u05B7\U00011A47", NormalForm::nfc), U"\u05B7\U00011A47");
  // A long mark sequence sorts stably by class: 220s before 230s, each group in input order.
  EXPECT_EQ(normalized(U"e\u0301\u0316\u0300\u0317\u0302", NormalForm::nfd),
            U"e\u0316\u0317\u0301\u0300\u0302");
  EXPECT_EQ(normalized(U"e\u0301\u0316\u0300\u0317\u0302", NormalForm::nfc),
            U"\u00E9\u0316\u0317\u0300\u0302");
}

TEST(Normalization, HangulComposesAndDecomposesByArithmetic) {
  EXPECT_EQ(normalized(U"\u1100\u1161\u11A8", NormalForm::nfc), U"\uAC01");
  EXPECT_EQ(normalized(U"\uAC00\u11A8", NormalForm::nfc), U"\uAC01");
  EXPECT_EQ(normalized(U"\uAC01", NormalForm::nfd), U"\u1100\u1161\u11A8");
  EXPECT_EQ(normalized(U"\uD7A3", NormalForm::nfkd), U"\u1112\u1175\u11C2");
  EXPECT_EQ(normalized(U"\u11A8\u1161\u1100", NormalForm::nfc), U"\u11A8\u1161\u1100");  // wrong order
}

TEST(Normalization, CompatibilityFormsUseUnicode9Mappings) {
  EXPECT_EQ(normalized(U"\uFB01", NormalForm::nfkc), U"fi");
  EXPECT_EQ(normalized(U"\u2460", NormalForm::nfkd), U"1");
  EXPECT_EQ(normalized(U"\U0001D7CE", NormalForm::nfkc), U"0");  // MATHEMATICAL BOLD DIGIT ZERO
  // OUTLINED DIGIT ZERO maps to '0' since Unicode 16.0, the reference's 9.0 tables know nothing.
  EXPECT_EQ(normalized(U"\U0001CCF0", NormalForm::nfkc), U"\U0001CCF0");
  EXPECT_EQ(normalized(U"\u32FF", NormalForm::nfkc), U"\u32FF");  // SQUARE ERA NAME REIWA, 12.1
  EXPECT_EQ(normalized(U"\uFB01", NormalForm::nfc), U"\uFB01");
}

TEST(Normalization, ChangesAlignOutputToInputCharacters) {
  // "ﬁé" under NFKC: 'f' replaces the ligature, 'i' is inserted after it, 'é' replaces e + U+0301.
  const auto chars = normalize(utf8(U"\uFB01e\u0301"), NormalForm::nfkc);
  ASSERT_EQ(chars.size(), 3U);
  EXPECT_EQ(chars[0].c, U'f');
  EXPECT_EQ(chars[0].change, 0);
  EXPECT_EQ(chars[1].c, U'i');
  EXPECT_EQ(chars[1].change, 1);
  EXPECT_EQ(chars[2].c, U'\u00E9');
  EXPECT_EQ(chars[2].change, -1);
}

TEST(Normalization, StableTextIsRecognisedWithoutNormalizing) {
  EXPECT_TRUE(is_normalization_stable("plain ascii", NormalForm::nfc));
  EXPECT_TRUE(is_normalization_stable(utf8(U"\u4E2D\u6587 \u0416"), NormalForm::nfkc));
  EXPECT_FALSE(is_normalization_stable(utf8(U"e\u0301"), NormalForm::nfc));
  EXPECT_FALSE(is_normalization_stable(utf8(U"\u00E9"), NormalForm::nfd));
  EXPECT_FALSE(is_normalization_stable(utf8(U"\uFB01"), NormalForm::nfkc));
  EXPECT_TRUE(is_normalization_stable(utf8(U"\uFB01"), NormalForm::nfc));
  EXPECT_FALSE(is_normalization_stable(utf8(U"\u1100\u1161"), NormalForm::nfc));
  EXPECT_FALSE(is_normalization_stable(utf8(U"\uAC00"), NormalForm::nfd));
}

TEST(ExpandUnicodeClasses, PropertiesBecomeRangesInsideAndOutsideClasses) {
  const std::string letters = expand_unicode_classes(R"(\p{L})");
  EXPECT_EQ(letters.rfind(R"([\x{41}-\x{5a}\x{61}-\x{7a}\x{aa})", 0), 0U) << letters.substr(0, 80);
  EXPECT_EQ(letters.back(), ']');
  const std::string negated = expand_unicode_classes(R"([^\s\p{N}])");
  EXPECT_EQ(negated.rfind(R"([^\x{9}-\x{d}\x{20}\x{85}\x{a0})", 0), 0U) << negated.substr(0, 80);
  EXPECT_EQ(std::count(negated.begin(), negated.end(), '['), 1);
  // \P{L} inside a class is the complement's ranges: the class starts at U+0000.
  EXPECT_EQ(expand_unicode_classes(R"([\P{L}])").rfind(R"([\x{0}-\x{40}\x{5b}-\x{60})", 0), 0U);
  EXPECT_EQ(expand_unicode_classes(R"(\x{41}\Q\p{L}\E\p{Greek})"), R"(\x{41}\Q\p{L}\E\p{Greek})");
  EXPECT_EQ(expand_unicode_classes(R"([\]\\]x)"), R"([\]\\]x)");
}

// Random text over the characters the split patterns treat differently.
std::vector<std::string> random_texts(std::size_t count) {
  const std::u32string pool =
      U"aZ\u00E9\u01C5\u02B0\u4E2D\u0301\u0903\u20DD019\u0663\u2167\u00BD '\"!?/.,-_\r\n\t\u00A0\u3000"
      U"\u2028\u0085\u017Fs\u212AtTrReEvVmMlLdD\U0001F600\U000105C0\U0001CCF0\U0001611E\u200B\uFEFF";
  std::mt19937 rng(7);
  std::vector<std::string> texts;
  for (std::size_t k = 0; k < count; ++k) {
    std::u32string text;
    const std::size_t length = rng() % 24;
    for (std::size_t i = 0; i < length; ++i) text.push_back(pool[rng() % pool.size()]);
    texts.push_back(utf8(text));
  }
  return texts;
}

TEST(SplitScanner, EveryScannerMatchesWhatPcre2MatchesForItsPattern) {
  const auto texts = random_texts(20000);
  ASSERT_EQ(known_split_patterns().size(), 4U);
  for (const auto& known : known_split_patterns()) {
    const std::string pattern(known.pattern);
    const Regex scanned(pattern, "test");
    ASSERT_TRUE(scanned.scanned()) << pattern;
    const Regex engine = Regex::without_scanner(pattern, "test");
    ASSERT_FALSE(engine.scanned());
    std::size_t differ = 0;
    for (const auto& text : texts) {
      if (scanned.find_all(text) != engine.find_all(text) && ++differ <= 3) {
        ADD_FAILURE() << "pattern " << pattern << " differs on \"" << text << '"';
      }
    }
    EXPECT_EQ(differ, 0U) << pattern;
  }
}

TEST(SplitScanner, ThePatternsOfTheTokenizerFilesHaveScanners) {
  // As Llama-3.1's, Qwen3's and o200k's tokenizer.json spell them (and GPT-2's ByteLevel regex).
  EXPECT_EQ(
      scanner_for(
          R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"),
      SplitScanner::llama3);
  EXPECT_EQ(
      scanner_for(
          R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"),
      SplitScanner::qwen2);
  EXPECT_EQ(
      scanner_for(
          R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)"),
      SplitScanner::o200k);
}

TEST(SplitScanner, OnlyTheKnownPatternsCharacterForCharacter) {
  EXPECT_FALSE(scanner_for(R"(\p{L}+|\s+)"));
  EXPECT_FALSE(scanner_for(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s)"));
  EXPECT_EQ(scanner_for(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"),
            SplitScanner::gpt2);
}

TEST(SplitScanner, SplitsNewCharactersAsLettersAndDigits) {
  // Todhri letters (16.0) join a word; outlined digits (16.0) group by three.
  const Regex llama3(
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
      "test");
  const std::string text = utf8(U"a\U000105C0b \U0001CCF0\U0001CCF1\U0001CCF2\U0001CCF3 it\u017F'S");
  const auto matches = llama3.find_all(text);
  std::vector<std::string> pieces;
  for (const auto& [first, last] : matches) pieces.push_back(text.substr(first, last - first));
  EXPECT_EQ(pieces,
            (std::vector<std::string>{utf8(U"a\U000105C0b"), " ", utf8(U"\U0001CCF0\U0001CCF1\U0001CCF2"),
                                      utf8(U"\U0001CCF3"), utf8(U" it\u017F"), "'S"}));
}

}  // namespace

namespace {

TEST(ExpandUnicodeClasses, InvalidUtf8InAPatternIsAnInputError) {
  // Found by split_fuzz: a pattern with invalid UTF-8 used to be compiled unchecked.
  const std::string pattern("=|{L}[\xff\x00\xe8\xd0s\\\xff]\xfd\\p\\w", 18);
  EXPECT_THROW(Regex(pattern, "test"), ndif::InputError);
  EXPECT_THROW(Regex(std::string("\xc3("), "test"), ndif::InputError);
}

TEST(ExpandUnicodeClasses, Pcre2ClassifiesByUnicode16WhateverItsOwnTables) {
  const Regex letters(R"(\p{L}+|\P{L})", "test");
  ASSERT_FALSE(letters.scanned());
  const std::string text = utf8(U"a\U000105C0\U0001E4D0b\U0001CCF0");
  EXPECT_EQ(letters.find_all(text), (std::vector<ByteRange>{{0, 10}, {10, 14}}));
  const Regex digits(R"(\d+)", "test");
  EXPECT_EQ(digits.find_all(text), (std::vector<ByteRange>{{10, 14}}));
}

}  // namespace
