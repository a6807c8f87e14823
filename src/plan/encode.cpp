#include <algorithm>
#include <exception>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/plan/batch_plan.hpp"

namespace ndif::plan {

namespace {

std::size_t code_points(std::string_view utf8) {
  return static_cast<std::size_t>(std::count_if(
      utf8.begin(), utf8.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// A span is the n-th non-overlapping occurrence of a substring (negative n counts from the end),
// mapped to tokens through the encoding's code-point offsets: the first or last token whose range
// overlaps the occurrence. Tokens with an empty range (special tokens) never match.
std::int32_t resolve_span(const spec::PositionSpec& position, const std::string& text,
                          const tokenizer::Encoding& encoding, const std::string& prefix) {
  std::vector<std::size_t> starts;
  for (auto at = text.find(position.span); at != std::string::npos;
       at = text.find(position.span, at + position.span.size())) {
    starts.push_back(at);
  }
  if (starts.empty())
    throw InputError(prefix + "span \"" + position.span + "\" does not occur in the prompt");
  const auto count = static_cast<std::int64_t>(starts.size());
  const std::int64_t chosen = position.occurrence < 0 ? count + position.occurrence : position.occurrence;
  if (chosen < 0 || chosen >= count) {
    throw InputError(prefix + "span \"" + position.span + "\" occurs " + std::to_string(count) +
                     (count == 1 ? " time" : " times") + ", so occurrence " +
                     std::to_string(position.occurrence) + " does not exist (0 is the first, -1 the last)");
  }
  const auto begin =
      static_cast<std::uint32_t>(code_points(std::string_view(text).substr(0, starts[chosen])));
  const auto end = static_cast<std::uint32_t>(begin + code_points(position.span));
  std::optional<std::int32_t> found;
  for (std::size_t t = 0; t < encoding.offsets.size(); ++t) {
    const auto [first, last] = encoding.offsets[t];
    if (first < last && first < end && last > begin) {
      found = static_cast<std::int32_t>(t);
      if (!position.last_token) break;
    }
  }
  if (!found) {
    throw InputError(prefix + "span \"" + position.span +
                     "\" is covered by no token (the tokenizer's offsets do not " +
                     "reach it, e.g. because its normalizer removed it)");
  }
  return *found;
}

}  // namespace

namespace {

// One prompt: its ids and its positions. Every prompt must have the `positions` of the file's
// first, line `first_line`.
EncodedPrompt encode_one(const spec::PromptRecord& record, std::size_t positions, std::size_t first_line,
                         const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                         const std::string& name) {
  const std::string prefix = name + ":" + std::to_string(record.line) + ": ";
  if (record.positions.size() != positions) {
    throw InputError(
        prefix + "this prompt has " + std::to_string(record.positions.size()) + " positions but line " +
        std::to_string(first_line) + " has " + std::to_string(positions) +
        "; every prompt must resolve to the same number of positions P = " + std::to_string(positions));
  }
  tokenizer::Encoding encoding;
  try {
    encoding = tokenizer.encode(record.text, add_special_tokens);
  } catch (const InputError& error) {
    throw InputError(prefix + error.what());
  }
  if (encoding.ids.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
    throw InputError(prefix + "the prompt has more than 2^31 tokens");
  }
  const auto n_tokens = static_cast<std::int64_t>(encoding.ids.size());
  EncodedPrompt prompt;
  prompt.positions.reserve(record.positions.size());
  for (const spec::PositionSpec& position : record.positions) {
    if (position.is_span) {
      prompt.positions.push_back(resolve_span(position, record.text, encoding, prefix));
      continue;
    }
    const std::int64_t index = position.index < 0 ? n_tokens + position.index : position.index;
    if (index < 0 || index >= n_tokens) {
      throw InputError(prefix + "position " + std::to_string(position.index) +
                       " is out of range for a prompt of " + std::to_string(n_tokens) +
                       (n_tokens == 1 ? " token" : " tokens"));
    }
    prompt.positions.push_back(static_cast<std::int32_t>(index));
  }
  prompt.ids = std::move(encoding.ids);
  return prompt;
}

}  // namespace

std::vector<EncodedPrompt> encode_records(const std::vector<spec::PromptRecord>& records,
                                          std::size_t positions_per_row,
                                          const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                                          const std::filesystem::path& prompts_file) {
  const std::string name = prompts_file.string();
  std::vector<EncodedPrompt> encoded;
  encoded.reserve(records.size());
  for (const auto& record : records)
    encoded.push_back(encode_one(record, positions_per_row, 1, tokenizer, add_special_tokens, name));
  return encoded;
}

std::vector<EncodedPrompt> encode_prompts(const std::vector<spec::PromptRecord>& prompts,
                                          const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                                          const std::filesystem::path& prompts_file) {
  if (prompts.empty()) return {};
  return encode_records(prompts, prompts.front().positions.size(), tokenizer, add_special_tokens,
                        prompts_file);
}

namespace {

/// The first bad row of a range and why.
struct RowError {
  std::size_t row = std::numeric_limits<std::size_t>::max();
  std::exception_ptr error;
};

/// A prompt's id hash and row, sorted to find repeated ids without holding the ids.
struct IdKey {
  std::uint64_t hash;
  std::size_t row;
  auto operator<=>(const IdKey&) const = default;
};

std::uint64_t id_hash(const std::string& id) noexcept {
  return xxh3_64(std::as_bytes(std::span<const char>(id.data(), id.size())));
}

/// Measures rows [begin, end) into `shapes` on `threads` threads (contiguous slices), the record of
/// a row made by `record_at(row, scratch)`. Each slice stops at its first bad row; the lowest is
/// returned, so the error is the one a single thread would meet first. With `ids`, each row's id
/// hash goes to ids[row].
template <typename RecordAt>
RowError measure_range(std::size_t begin, std::size_t end, unsigned threads, const RecordAt& record_at,
                       std::size_t p, const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                       const std::string& name, PromptShapes& shapes, std::vector<IdKey>* ids) {
  const std::size_t n = end - begin;
  const std::size_t parts = std::clamp<std::size_t>(threads, 1, std::max<std::size_t>(1, n / 64));
  struct Slice {
    RowError bad;
    std::int32_t max_id = -1;
    std::size_t max_row = 0;
  };
  std::vector<Slice> slices(parts);
  auto work = [&](std::size_t part) {
    Slice& slice = slices[part];
    spec::PromptRecord scratch;
    for (std::size_t row = begin + n * part / parts, last = begin + n * (part + 1) / parts; row < last;
         ++row) {
      try {
        const spec::PromptRecord& record = record_at(row, scratch);
        if (ids != nullptr) (*ids)[row] = IdKey{id_hash(record.id), row};
        auto prompt = encode_one(record, p, 1, tokenizer, add_special_tokens, name);
        shapes.n_tokens[row] = static_cast<std::int32_t>(prompt.ids.size());
        std::copy(prompt.positions.begin(), prompt.positions.end(),
                  shapes.positions.begin() + static_cast<std::ptrdiff_t>(row * p));
        for (const auto id : prompt.ids) {
          if (id > slice.max_id) {
            slice.max_id = id;
            slice.max_row = row;
          }
        }
      } catch (...) {
        slice.bad = RowError{row, std::current_exception()};
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t part = 1; part < parts; ++part) pool.emplace_back(work, part);
  work(0);
  for (auto& t : pool) t.join();
  for (const Slice& slice : slices) {
    if (slice.bad.error) return slice.bad;  // slices are in row order
    if (slice.max_id > shapes.max_token_id) {
      shapes.max_token_id = slice.max_id;
      shapes.max_token_row = slice.max_row;
    }
  }
  return {};
}

void size_shapes(PromptShapes& shapes, std::size_t n, std::size_t p) {
  shapes.positions_per_row = static_cast<std::int64_t>(p);
  shapes.n_tokens.assign(n, 0);
  shapes.positions.assign(n * p, 0);
}

/// The first row of `file` below `before` whose id an earlier row has, as an error naming both
/// lines. `keys` are the hashes of rows [0, before), sorted here; only rows whose hashes collide are
/// parsed again, to compare the ids themselves.
RowError first_repeated_id(std::vector<IdKey>& keys, std::size_t before, const spec::PromptsFile& file,
                           const std::vector<spec::PositionSpec>& default_positions) {
  keys.resize(std::min(keys.size(), before));
  std::sort(keys.begin(), keys.end());
  RowError first;
  for (std::size_t a = 0; a < keys.size();) {
    std::size_t b = a + 1;
    while (b < keys.size() && keys[b].hash == keys[a].hash) ++b;
    if (b - a > 1) {
      // Rows in increasing order: the first whose id an earlier row of the run has.
      std::vector<std::pair<std::string, std::size_t>> seen;
      for (std::size_t k = a; k < b && keys[k].row < first.row; ++k) {
        const auto row = keys[k].row;
        auto id = spec::parse_prompt(file.line(row), row, file.path(), default_positions).id;
        const auto earlier =
            std::find_if(seen.begin(), seen.end(), [&](const auto& s) { return s.first == id; });
        if (earlier != seen.end()) {
          first.row = row;
          first.error =
              std::make_exception_ptr(InputError(file.path().string() + ":" + std::to_string(row + 1) + ": " +
                                                 spec::duplicate_id_message(id, earlier->second + 1)));
          break;
        }
        seen.emplace_back(std::move(id), row);
      }
    }
    a = b;
  }
  return first;
}

}  // namespace

PromptShapes measure_prompts(const std::vector<spec::PromptRecord>& prompts,
                             const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                             const std::filesystem::path& prompts_file, unsigned threads) {
  PromptShapes shapes;
  const std::size_t n = prompts.size();
  if (n == 0) return shapes;
  const std::size_t p = prompts.front().positions.size();
  size_shapes(shapes, n, p);
  const auto bad = measure_range(
      0, n, threads,
      [&](std::size_t row, spec::PromptRecord&) -> const spec::PromptRecord& { return prompts[row]; }, p,
      tokenizer, add_special_tokens, prompts_file.string(), shapes, nullptr);
  if (bad.error) std::rethrow_exception(bad.error);
  return shapes;
}

PromptShapes scan_prompts(const spec::PromptsFile& file,
                          const std::vector<spec::PositionSpec>& default_positions,
                          const tokenizer::Tokenizer& tokenizer, bool add_special_tokens, unsigned threads,
                          std::size_t block_rows) {
  const std::size_t n = file.rows();
  const std::string name = file.path().string();
  // Row 0 fixes P; when it is bad, it is the first bad row.
  const std::size_t p = spec::parse_prompt(file.line(0), 0, file.path(), default_positions).positions.size();
  PromptShapes shapes;
  size_shapes(shapes, n, p);
  std::vector<IdKey> ids(n);
  RowError bad;
  block_rows = std::max<std::size_t>(block_rows, 1);
  for (std::size_t first = 0; first < n && !bad.error; first += block_rows) {
    const auto block = file.lines(first, std::min(block_rows, n - first));
    bad = measure_range(
        first, first + block.size(), threads,
        [&](std::size_t row, spec::PromptRecord& scratch) -> const spec::PromptRecord& {
          scratch = spec::parse_prompt(block.line(row - first), row, file.path(), default_positions);
          return scratch;
        },
        p, tokenizer, add_special_tokens, name, shapes, &ids);
  }
  // Every row before the first bad one has its id hash; a repeated id there comes first.
  const auto repeat = first_repeated_id(ids, bad.error ? bad.row : n, file, default_positions);
  std::vector<IdKey>().swap(ids);
  if (repeat.error) std::rethrow_exception(repeat.error);
  if (bad.error) std::rethrow_exception(bad.error);
  return shapes;
}

}  // namespace ndif::plan
