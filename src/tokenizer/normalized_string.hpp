#pragma once
/// \file
/// A piece of text being normalized and split, that remembers for every byte which bytes of the
/// original input it came from, so that token offsets can be reported in the original text.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "regex.hpp"
#include "unicode.hpp"

namespace ndif::tokenizer::detail {

/// How a split pre-tokenizer treats the matches of its pattern.
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

class NormalizedString {
 public:
  /// The piece [first, last) of `original`, not yet normalized.
  NormalizedString(std::string_view original, std::size_t first, std::size_t last);

  [[nodiscard]] const std::string& text() const noexcept { return text_; }
  [[nodiscard]] bool empty() const noexcept { return text_.empty(); }
  /// First original byte this piece stands for (0 for an empty piece).
  [[nodiscard]] std::size_t original_start() const noexcept {
    return alignments_.empty() ? 0 : alignments_[0].first;
  }

  /// Original byte range of the normalized bytes [first, last); empty ranges map to themselves.
  [[nodiscard]] ByteRange original_range(std::size_t first, std::size_t last) const noexcept;

  /// Replaces the whole text by `chars`, each tagged with how it relates to the current characters.
  void transform(const std::vector<ChangedChar>& chars);
  /// Inserts `prefix` before the first character (nothing for an empty string).
  void prepend(std::string_view prefix);
  /// Replaces every match of `pattern` by `content`.
  void replace(const Regex& pattern, std::string_view content);
  /// Maps every byte to the printable character that stands for it in byte-level vocabularies.
  void to_byte_level();

  /// Splits on the matches of `pattern` (or on what lies between them, with `invert`).
  [[nodiscard]] std::vector<NormalizedString> split(const Regex& pattern, SplitBehavior behavior,
                                                    bool invert) const;
  /// The piece of normalized bytes [first, last).
  [[nodiscard]] NormalizedString slice(std::size_t first, std::size_t last) const;

 private:
  NormalizedString() = default;
  std::string text_;
  std::vector<ByteRange> alignments_;  // per byte of text_: the original bytes it stands for
};

}  // namespace ndif::tokenizer::detail
