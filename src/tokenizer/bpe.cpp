#include "bpe.hpp"

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <queue>

#include "ndif_sweep/core/error.hpp"
#include "unicode.hpp"

// Inlined so that the hot vocabulary lookups of encoding make no library call.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace ndif::tokenizer::detail {

namespace {

std::uint64_t pair_key(std::int32_t left, std::int32_t right) noexcept {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) |
         static_cast<std::uint32_t>(right);
}

std::uint64_t hash_bytes(std::string_view bytes) noexcept { return XXH3_64bits(bytes.data(), bytes.size()); }

// Spreads a pair key over all bits, so that masking to the table size keeps both ids' entropy.
std::uint64_t hash_pair(std::uint64_t key) noexcept {
  key ^= key >> 33;
  key *= 0xFF51AFD7ED558CCDULL;
  key ^= key >> 33;
  return key;
}

std::size_t table_size_for(std::size_t count) noexcept {
  std::size_t size = 16;
  while (size < 2 * count) size *= 2;
  return size;
}

}  // namespace

// Real text repeats its words, and merging a word costs several hash lookups per character. The
// cache is direct-mapped (a word's hash picks its one slot, a newcomer replaces the occupant), so it
// stays bounded with no eviction bookkeeping; shards with their own locks keep threads apart.
class Bpe::WordCache {
 public:
  // Longer words seldom repeat; caching them would only churn the slots.
  static constexpr std::size_t max_word_bytes = 64;

  bool find(std::string_view word, std::uint64_t hash, std::vector<WordToken>& out) {
    Shard& shard = shards_[shard_of(hash)];
    const std::lock_guard lock(shard.mutex);
    const Slot& slot = shard.slots[slot_of(hash)];
    if (slot.hash != hash || slot.word != word) return false;
    out.insert(out.end(), slot.tokens.begin(), slot.tokens.end());
    return true;
  }

  void store(std::string_view word, std::uint64_t hash, const WordToken* first, const WordToken* last) {
    Shard& shard = shards_[shard_of(hash)];
    const std::lock_guard lock(shard.mutex);
    Slot& slot = shard.slots[slot_of(hash)];
    slot.hash = hash;
    slot.word.assign(word);
    slot.tokens.assign(first, last);
  }

 private:
  static constexpr std::size_t shard_count = 32;
  static constexpr std::size_t slots_per_shard = 1024;
  static std::size_t shard_of(std::uint64_t hash) noexcept { return hash >> 59; }
  static std::size_t slot_of(std::uint64_t hash) noexcept { return hash & (slots_per_shard - 1); }

  struct Slot {
    std::uint64_t hash = 0;
    std::string word;
    std::vector<WordToken> tokens;
  };
  struct alignas(64) Shard {
    std::mutex mutex;
    std::array<Slot, slots_per_shard> slots;
  };
  std::array<Shard, shard_count> shards_;
};

void Vocabulary::assign(std::string_view token, std::int32_t id) {
  if (2 * (entries_.size() + 1) > slots_.size()) grow();
  const std::uint64_t hash = hash_bytes(token);
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t slot = hash & mask;; slot = (slot + 1) & mask) {
    const std::uint32_t index = slots_[slot];
    if (index == 0) {
      if (bytes_.size() + token.size() > UINT32_MAX)
        throw InputError("model.vocab holds more than 4 GiB of token text");
      entries_.push_back({static_cast<std::uint32_t>(bytes_.size()), static_cast<std::uint32_t>(token.size()),
                          id, static_cast<std::uint32_t>(hash)});
      bytes_.append(token);
      slots_[slot] = static_cast<std::uint32_t>(entries_.size());
      return;
    }
    Entry& entry = entries_[index - 1];
    if (entry.hash == static_cast<std::uint32_t>(hash) && token_of(entry) == token) {
      entry.id = id;
      return;
    }
  }
}

std::optional<std::int32_t> Vocabulary::find(std::string_view token) const noexcept {
  if (slots_.empty()) return std::nullopt;
  const std::uint64_t hash = hash_bytes(token);
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t slot = hash & mask;; slot = (slot + 1) & mask) {
    const std::uint32_t index = slots_[slot];
    if (index == 0) return std::nullopt;
    const Entry& entry = entries_[index - 1];
    if (entry.hash == static_cast<std::uint32_t>(hash) && token_of(entry) == token) return entry.id;
  }
}

void Vocabulary::grow() {
  // Only the stored low 32 bits of each hash are at hand; they address tables of up to 2^32 slots.
  slots_.assign(std::max<std::size_t>(slots_.size() * 2, 1024), 0);
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    std::size_t slot = entries_[i].hash & mask;
    while (slots_[slot] != 0) slot = (slot + 1) & mask;
    slots_[slot] = static_cast<std::uint32_t>(i + 1);
  }
}

void TokenPairs::add(std::string_view left, std::string_view right) {
  if (bytes_.size() + left.size() + right.size() > UINT32_MAX)
    throw InputError("model.merges hold more than 4 GiB of token text");
  bytes_.append(left);
  ends_.push_back(static_cast<std::uint32_t>(bytes_.size()));
  bytes_.append(right);
  ends_.push_back(static_cast<std::uint32_t>(bytes_.size()));
}

std::pair<std::string_view, std::string_view> TokenPairs::operator[](std::size_t index) const noexcept {
  const std::size_t start = index == 0 ? 0 : ends_[2 * index - 1];
  const std::size_t middle = ends_[2 * index];
  const std::size_t end = ends_[2 * index + 1];
  const std::string_view bytes(bytes_);
  return {bytes.substr(start, middle - start), bytes.substr(middle, end - middle)};
}

Bpe::Bpe(Vocabulary vocab, const TokenPairs& merges, BpeOptions options, const std::string& where)
    : vocab_(std::move(vocab)), options_(std::move(options)), cache_(std::make_unique<WordCache>()) {
  auto id_of = [&](std::string_view token, std::size_t rank) {
    const auto id = vocab_.find(token);
    if (!id) {
      throw InputError(where + ": model.merges[" + std::to_string(rank) + "] uses \"" + std::string(token) +
                       "\", which is not in model.vocab");
    }
    return *id;
  };
  merges_.assign(table_size_for(merges.size()), Merge{empty_pair, 0, 0});
  const std::size_t mask = merges_.size() - 1;
  const std::string_view prefix = options_.continuing_subword_prefix;
  std::string merged;
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const auto [left, right] = merges[rank];
    merged.assign(left);
    merged.append(right.substr(right.starts_with(prefix) ? prefix.size() : 0));
    const Merge merge{pair_key(id_of(left, rank), id_of(right, rank)), static_cast<std::uint32_t>(rank),
                      id_of(merged, rank)};
    std::size_t slot = hash_pair(merge.pair) & mask;
    while (merges_[slot].pair != empty_pair && merges_[slot].pair != merge.pair) slot = (slot + 1) & mask;
    // A repeated merge keeps its last rank, as the reference's map does.
    merges_[slot] = merge;
  }
  if (options_.unk_token) {
    unk_id_ = vocab_.find(*options_.unk_token);
    if (!unk_id_)
      throw InputError(where + ": model.unk_token \"" + *options_.unk_token + "\" is not in model.vocab");
  }
  if (options_.byte_fallback) {
    byte_ids_.assign(256, -1);
    for (int b = 0; b < 256; ++b) {
      std::array<char, 8> name{};
      std::snprintf(name.data(), name.size(), "<0x%02X>", b);
      if (const auto id = vocab_.find(std::string_view(name.data())))
        byte_ids_[static_cast<std::size_t>(b)] = *id;
    }
  }
}

const Bpe::Merge* Bpe::find_merge(std::int32_t left, std::int32_t right) const noexcept {
  const std::uint64_t key = pair_key(left, right);
  const std::size_t mask = merges_.size() - 1;
  for (std::size_t slot = hash_pair(key) & mask;; slot = (slot + 1) & mask) {
    const Merge& merge = merges_[slot];
    if (merge.pair == key) return &merge;
    if (merge.pair == empty_pair) return nullptr;
  }
}

Bpe::Bpe(Bpe&&) noexcept = default;
Bpe& Bpe::operator=(Bpe&&) noexcept = default;
Bpe::~Bpe() = default;

void Bpe::tokenize(std::string_view word, std::vector<WordToken>& out) const {
  if (word.empty()) return;
  if (word.size() > WordCache::max_word_bytes) {
    tokenize_uncached(word, out);
    return;
  }
  const std::uint64_t hash = hash_bytes(word);
  if (cache_->find(word, hash, out)) return;
  const std::size_t first = out.size();
  tokenize_uncached(word, out);
  cache_->store(word, hash, out.data() + first, out.data() + out.size());
}

void Bpe::tokenize_uncached(std::string_view word, std::vector<WordToken>& out) const {
  if (options_.ignore_merges) {
    if (const auto id = vocab_.find(word)) {
      out.push_back({*id, 0, static_cast<std::uint32_t>(word.size())});
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
    if (const auto id = vocab_.find(key)) {
      if (unk) {
        add(*unk_id_, unk_first, unk_length);
        unk = false;
      }
      add(*id, first, static_cast<std::uint32_t>(length));
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
