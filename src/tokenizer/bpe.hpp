#pragma once
/// \file
/// The BPE model of tokenizer.json: vocabulary, ranked merges, byte fallback and unknown tokens.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ndif::tokenizer::detail {

/// Token strings and their ids. The strings live in one buffer behind an open-addressing index, so
/// loading a 262,144-token vocabulary makes no allocation per token and a lookup by string_view
/// allocates nothing.
class Vocabulary {
 public:
  /// Sets the id of `token`; a repeated token keeps its last id, as the reference's map does.
  void assign(std::string_view token, std::int32_t id);
  /// The id of `token`, or nullopt.
  [[nodiscard]] std::optional<std::int32_t> find(std::string_view token) const noexcept;
  /// Number of distinct token strings.
  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
  /// Every token string with its id, in insertion order.
  template <typename Visit>
  void for_each(Visit&& visit) const {
    for (const Entry& entry : entries_) visit(token_of(entry), entry.id);
  }

 private:
  struct Entry {
    std::uint32_t offset;
    std::uint32_t length;
    std::int32_t id;
    std::uint32_t hash;  // low bits of the token's hash: rehashing and most mismatches skip the bytes
  };
  [[nodiscard]] std::string_view token_of(const Entry& entry) const noexcept {
    return std::string_view(bytes_).substr(entry.offset, entry.length);
  }
  void grow();

  std::string bytes_;
  std::vector<Entry> entries_;
  std::vector<std::uint32_t> slots_;  // 1 + index into entries_, 0 when free; size a power of two
};

/// The merges of model.merges in file order (highest priority first), as pairs of token strings
/// kept in one buffer.
class TokenPairs {
 public:
  void add(std::string_view left, std::string_view right);
  [[nodiscard]] std::size_t size() const noexcept { return ends_.size() / 2; }
  [[nodiscard]] std::pair<std::string_view, std::string_view> operator[](std::size_t index) const noexcept;

 private:
  std::string bytes_;
  std::vector<std::uint32_t> ends_;  // end offset of each left and right token
};

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
  /// Builds the model from `vocab` and `merges` (highest priority first). Throws InputError naming
  /// `where` if a merge or the unknown token is not in the vocabulary.
  Bpe(Vocabulary vocab, const TokenPairs& merges, BpeOptions options, const std::string& where);

  Bpe(Bpe&&) noexcept;
  Bpe& operator=(Bpe&&) noexcept;
  ~Bpe();

  /// Tokenizes one word, appending its tokens to `out`. Safe to call from several threads: the
  /// tokens of short words are kept in a bounded cache that the threads share.
  void tokenize(std::string_view word, std::vector<WordToken>& out) const;

  [[nodiscard]] const Vocabulary& vocab() const noexcept { return vocab_; }

 private:
  struct Merge {
    std::uint64_t pair;  // left id << 32 | right id; `empty_pair` marks a free slot
    std::uint32_t rank;
    std::int32_t id;
  };
  static constexpr std::uint64_t empty_pair = ~std::uint64_t{0};
  [[nodiscard]] const Merge* find_merge(std::int32_t left, std::int32_t right) const noexcept;
  void tokenize_uncached(std::string_view word, std::vector<WordToken>& out) const;

  class WordCache;

  Vocabulary vocab_;
  std::vector<Merge> merges_;  // open addressing, size a power of two, at most half full
  BpeOptions options_;
  std::optional<std::int32_t> unk_id_;
  std::vector<std::int32_t> byte_ids_;  // <0xXX> tokens for byte fallback, -1 when absent
  std::unique_ptr<WordCache> cache_;
};

}  // namespace ndif::tokenizer::detail
