#pragma once
/// \file
/// The BPE model of tokenizer.json: vocabulary, ranked merges, byte fallback and unknown tokens.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ndif::tokenizer::detail {

/// Transparent hashing so that vocabulary lookups take a string_view without a copy.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using Vocabulary = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;

/// A token of one pre-tokenized word: its id and byte range in the word.
struct WordToken {
  std::int32_t id;
  std::uint32_t first;
  std::uint32_t last;
};

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class Bpe {
public:
  /// `merges` are pairs of token strings, highest priority first. Throws InputError naming
  /// `where` if a merge or the unknown token is not in the vocabulary.
  Bpe(Vocabulary vocab, const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
      const std::string& where);

  /// Tokenizes one word, appending its tokens to `out`.
  void tokenize(std::string_view word, std::vector<WordToken>& out) const;

  [[nodiscard]] const Vocabulary& vocab() const noexcept { return vocab_; }

private:
  struct Merge {
    std::uint32_t rank;
    std::int32_t id;
  };
  [[nodiscard]] const Merge* find_merge(std::int32_t left, std::int32_t right) const noexcept;

  Vocabulary vocab_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  BpeOptions options_;
  std::optional<std::int32_t> unk_id_;
  std::vector<std::int32_t> byte_ids_;  // <0xXX> tokens for byte fallback, -1 when absent
};

}  // namespace ndif::tokenizer::detail
