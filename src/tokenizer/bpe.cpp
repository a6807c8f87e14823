#include "bpe.hpp"

#include <array>
#include <cstdio>
#include <queue>

#include "ndif_sweep/core/error.hpp"
#include "unicode.hpp"

namespace ndif::tokenizer::detail {

namespace {

std::uint64_t pair_key(std::int32_t left, std::int32_t right) noexcept {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
}

}  // namespace

Bpe::Bpe(Vocabulary vocab, const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
         const std::string& where)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  auto id_of = [&](const std::string& token, std::size_t rank) {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) {
      throw InputError(where + ": model.merges[" + std::to_string(rank) + "] uses \"" + token +
                       "\", which is not in model.vocab");
    }
    return it->second;
  };
  merges_.reserve(merges.size());
  const std::size_t prefix = options_.continuing_subword_prefix.size();
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    std::string merged = left;
    merged.append(right.size() >= prefix && right.compare(0, prefix, options_.continuing_subword_prefix) == 0
                      ? right.substr(prefix)
                      : right);
    // A repeated merge keeps its last rank, as the reference's map does.
    merges_[pair_key(id_of(left, rank), id_of(right, rank))] = Merge{static_cast<std::uint32_t>(rank), id_of(merged, rank)};
  }
  if (options_.unk_token) {
    const auto it = vocab_.find(*options_.unk_token);
    if (it == vocab_.end()) throw InputError(where + ": model.unk_token \"" + *options_.unk_token + "\" is not in model.vocab");
    unk_id_ = it->second;
  }
  if (options_.byte_fallback) {
    byte_ids_.assign(256, -1);
    for (int b = 0; b < 256; ++b) {
      std::array<char, 8> name{};
      std::snprintf(name.data(), name.size(), "<0x%02X>", b);
      if (const auto it = vocab_.find(std::string_view(name.data())); it != vocab_.end()) byte_ids_[static_cast<std::size_t>(b)] = it->second;
    }
  }
}

const Bpe::Merge* Bpe::find_merge(std::int32_t left, std::int32_t right) const noexcept {
  const auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void Bpe::tokenize(std::string_view word, std::vector<WordToken>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back({it->second, 0, static_cast<std::uint32_t>(word.size())});
      return;
    }
  }

  struct Symbol {
    std::int32_t id;
    std::uint32_t first;
    std::uint32_t length;  // 0 once merged into its left neighbour
    std::int32_t prev;
    std::int32_t next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](std::int32_t id, std::uint32_t first, std::uint32_t length) {
    const auto index = static_cast<std::int32_t>(symbols.size());
    symbols.push_back({id, first, length, index - 1, index + 1});
  };

  // Initial symbols: one per character, or its bytes, or (fused) unknown tokens.
  bool unk = false;  // an unknown run is pending: it starts at byte unk_first and spans unk_length
  std::uint32_t unk_first = 0;
  std::uint32_t unk_length = 0;
  std::string piece;
  const bool decorate = !options_.continuing_subword_prefix.empty() || !options_.end_of_word_suffix.empty();
  for (std::size_t at = 0; at < word.size();) {
    const std::size_t length = utf8_length(static_cast<unsigned char>(word[at]));
    std::string_view key = word.substr(at, length);
    if (decorate) {
      piece.clear();
      if (at != 0) piece += options_.continuing_subword_prefix;
      piece += key;
      if (at + length == word.size()) piece += options_.end_of_word_suffix;
      key = piece;
    }
    const auto first = static_cast<std::uint32_t>(at);
    at += length;
    if (const auto it = vocab_.find(key); it != vocab_.end()) {
      if (unk) {
        add(*unk_id_, unk_first, unk_length);
        unk = false;
      }
      add(it->second, first, static_cast<std::uint32_t>(length));
      continue;
    }
    if (options_.byte_fallback) {
      bool all_bytes = true;
      for (const char b : key) all_bytes = all_bytes && byte_ids_[static_cast<unsigned char>(b)] >= 0;
      if (all_bytes) {
        // Byte tokens cover the word's own bytes, one each (the decorated key is the same length
        // only without prefix and suffix, which byte-fallback vocabularies do not use).
        std::uint32_t byte_at = first;
        for (const char b : key) add(byte_ids_[static_cast<unsigned char>(b)], byte_at++, 1);
        continue;
      }
    }
    if (unk_id_) {
      if (unk && options_.fuse_unk) {
        unk_length += static_cast<std::uint32_t>(length);
      } else {
        if (unk) add(*unk_id_, unk_first, unk_length);
        unk = true;
        unk_first = first;
        unk_length = static_cast<std::uint32_t>(length);
      }
    }
  }
  if (unk) add(*unk_id_, unk_first, unk_length);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    std::uint32_t rank;
    std::int32_t position;
    std::int32_t id;
    bool operator>(const Candidate& other) const noexcept {
      return rank != other.rank ? rank > other.rank : position > other.position;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* merge = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({merge->rank, static_cast<std::int32_t>(i), merge->id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<std::size_t>(top.position)];
    if (left.length == 0 || left.next < 0) continue;
    Symbol& right = symbols[static_cast<std::size_t>(left.next)];
    const Merge* current = find_merge(left.id, right.id);
    if (current == nullptr || current->id != top.id) continue;  // a stale entry
    left.id = top.id;
    left.length += right.length;
    left.next = right.next;
    right.length = 0;
    if (left.next >= 0) symbols[static_cast<std::size_t>(left.next)].prev = top.position;
    if (left.prev >= 0) {
      if (const Merge* merge = find_merge(symbols[static_cast<std::size_t>(left.prev)].id, left.id)) {
        queue.push({merge->rank, left.prev, merge->id});
      }
    }
    if (left.next >= 0) {
      if (const Merge* merge = find_merge(left.id, symbols[static_cast<std::size_t>(left.next)].id)) {
        queue.push({merge->rank, top.position, merge->id});
      }
    }
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.length != 0) out.push_back({symbol.id, symbol.first, symbol.first + symbol.length});
  }
}

}  // namespace ndif::tokenizer::detail
