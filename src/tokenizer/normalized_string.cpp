#include "normalized_string.hpp"

#include <algorithm>
#include <array>

namespace ndif::tokenizer::detail {

NormalizedString::NormalizedString(std::string_view original, std::size_t first, std::size_t last)
    : text_(original.substr(first, last - first)) {
  alignments_.reserve(text_.size());
  for (std::size_t at = first; at < last;) {
    const std::size_t length = utf8_length(static_cast<unsigned char>(original[at]));
    for (std::size_t k = 0; k < length; ++k) alignments_.emplace_back(at, at + length);
    at += length;
  }
}

ByteRange NormalizedString::original_range(std::size_t first, std::size_t last) const noexcept {
  if (first >= last || last > alignments_.size()) return {first, last};
  return {alignments_[first].first, alignments_[last - 1].second};
}

// Each new character takes the alignment of the character it replaces; an inserted character
// takes the alignment of the last byte before it, as in the reference.
void NormalizedString::transform(const std::vector<ChangedChar>& chars) {
  std::string text;
  std::vector<ByteRange> alignments;
  text.reserve(text_.size());
  alignments.reserve(alignments_.size());
  std::size_t offset = 0;  // byte of the current text that the next replacing character stands for
  for (const ChangedChar& ch : chars) {
    ByteRange align{0, 0};
    if (ch.change > 0) {
      if (offset > 0) align = alignments_[offset - 1];
    } else {
      if (offset < alignments_.size()) align = alignments_[offset];
      if (offset < text_.size()) offset += utf8_length(static_cast<unsigned char>(text_[offset]));
      for (int removed = 0; removed < -ch.change && offset < text_.size(); ++removed) {
        offset += utf8_length(static_cast<unsigned char>(text_[offset]));
      }
    }
    const std::size_t before = text.size();
    append_utf8(text, ch.c);
    alignments.insert(alignments.end(), text.size() - before, align);
  }
  text_ = std::move(text);
  alignments_ = std::move(alignments);
}

void NormalizedString::prepend(std::string_view prefix) {
  if (text_.empty() || prefix.empty()) return;
  const ByteRange align = alignments_[0];
  std::vector<ByteRange> alignments(prefix.size(), align);
  alignments.insert(alignments.end(), alignments_.begin(), alignments_.end());
  text_.insert(0, prefix);
  alignments_ = std::move(alignments);
}

void NormalizedString::replace(const Regex& pattern, std::string_view content) {
  const auto matches = pattern.find_all(text_);
  if (matches.empty()) return;
  std::string text;
  std::vector<ByteRange> alignments;
  text.reserve(text_.size());
  alignments.reserve(alignments_.size());
  std::size_t last_end = 0;
  for (const auto& [first, last] : matches) {
    text.append(text_, last_end, first - last_end);
    alignments.insert(alignments.end(), alignments_.begin() + static_cast<std::ptrdiff_t>(last_end),
                      alignments_.begin() + static_cast<std::ptrdiff_t>(first));
    // The replacement is inserted after the removed match, so it takes the match's last alignment.
    const ByteRange align = last > 0 ? alignments_[last - 1] : ByteRange{0, 0};
    text.append(content);
    alignments.insert(alignments.end(), content.size(), align);
    last_end = last;
  }
  text.append(text_, last_end);
  alignments.insert(alignments.end(), alignments_.begin() + static_cast<std::ptrdiff_t>(last_end),
                    alignments_.end());
  text_ = std::move(text);
  alignments_ = std::move(alignments);
}

namespace {

// GPT-2's reversible byte-to-character table: printable bytes stand for themselves, the others
// are shifted above U+0100. Every character is below U+0800, so its UTF-8 takes one or two bytes.
struct ByteLevelChar {
  std::array<char, 2> bytes;
  std::size_t length;
};
const std::array<ByteLevelChar, 256>& byte_level_chars() {
  static const std::array<ByteLevelChar, 256> table = [] {
    std::array<ByteLevelChar, 256> chars{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      std::string utf8;
      append_utf8(utf8, printable ? static_cast<char32_t>(b) : next++);
      auto& entry = chars[static_cast<std::size_t>(b)];
      entry.length = utf8.size();
      std::copy(utf8.begin(), utf8.end(), entry.bytes.begin());
    }
    return chars;
  }();
  return table;
}

}  // namespace

void NormalizedString::to_byte_level() {
  // Written in place into buffers sized for the worst case (two bytes each): this runs on every
  // byte of every prompt.
  const auto& table = byte_level_chars();
  std::string text(text_.size() * 2, '\0');
  std::vector<ByteRange> alignments(text_.size() * 2);
  std::size_t out = 0;
  for (std::size_t i = 0; i < text_.size(); ++i) {
    const ByteLevelChar& mapped = table[static_cast<unsigned char>(text_[i])];
    text[out] = mapped.bytes[0];
    alignments[out] = alignments_[i];
    if (mapped.length == 2) {
      text[out + 1] = mapped.bytes[1];
      alignments[out + 1] = alignments_[i];
    }
    out += mapped.length;
  }
  text.resize(out);
  alignments.resize(out);
  text_ = std::move(text);
  alignments_ = std::move(alignments);
}

NormalizedString NormalizedString::slice(std::size_t first, std::size_t last) const {
  NormalizedString piece;
  piece.text_ = text_.substr(first, last - first);
  piece.alignments_.assign(alignments_.begin() + static_cast<std::ptrdiff_t>(first),
                           alignments_.begin() + static_cast<std::ptrdiff_t>(last));
  return piece;
}

std::vector<NormalizedString> NormalizedString::split(const Regex& pattern, SplitBehavior behavior,
                                                      bool invert) const {
  struct Piece {
    ByteRange range;
    bool is_match;
  };
  std::vector<Piece> pieces;
  if (text_.empty()) return {};
  std::size_t previous = 0;
  for (const auto& match : pattern.find_all(text_)) {
    if (previous != match.first) pieces.push_back({{previous, match.first}, invert});
    pieces.push_back({match, !invert});
    previous = match.second;
  }
  if (previous != text_.size()) pieces.push_back({{previous, text_.size()}, invert});

  std::vector<ByteRange> kept;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::isolated:
      for (const auto& piece : pieces) kept.push_back(piece.range);
      break;
    case SplitBehavior::removed:
      for (const auto& piece : pieces) {
        if (!piece.is_match) kept.push_back(piece.range);
      }
      break;
    case SplitBehavior::contiguous:
      for (const auto& piece : pieces) {
        if (piece.is_match == previous_match && !kept.empty()) {
          kept.back().second = piece.range.second;
        } else {
          kept.push_back(piece.range);
        }
        previous_match = piece.is_match;
      }
      break;
    case SplitBehavior::merged_with_previous:
      for (const auto& piece : pieces) {
        if (piece.is_match && !previous_match && !kept.empty()) {
          kept.back().second = piece.range.second;
        } else {
          kept.push_back(piece.range);
        }
        previous_match = piece.is_match;
      }
      break;
    case SplitBehavior::merged_with_next:
      for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().first = it->range.first;
        } else {
          kept.push_back(it->range);
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  std::vector<NormalizedString> out;
  out.reserve(kept.size());
  for (const auto& [first, last] : kept) {
    if (first < last) out.push_back(slice(first, last));
  }
  return out;
}

}  // namespace ndif::tokenizer::detail
