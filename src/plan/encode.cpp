#include <algorithm>
#include <exception>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "ndif_sweep/core/error.hpp"
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

std::vector<EncodedPrompt> encode_rows(const std::vector<spec::PromptRecord>& prompts,
                                       const std::vector<std::int64_t>& rows,
                                       const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                                       const std::filesystem::path& prompts_file) {
  const std::string name = prompts_file.string();
  std::vector<EncodedPrompt> encoded;
  encoded.reserve(rows.size());
  for (const auto row : rows) {
    if (row < 0 || static_cast<std::size_t>(row) >= prompts.size())
      throw InternalError("encode_rows: row " + std::to_string(row) + " of " +
                          std::to_string(prompts.size()));
    encoded.push_back(encode_one(prompts[static_cast<std::size_t>(row)], prompts.front().positions.size(),
                                 prompts.front().line, tokenizer, add_special_tokens, name));
  }
  return encoded;
}

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
  std::vector<std::int64_t> rows(prompts.size());
  std::iota(rows.begin(), rows.end(), std::int64_t{0});
  return encode_rows(prompts, rows, tokenizer, add_special_tokens, prompts_file);
}

PromptShapes measure_prompts(const std::vector<spec::PromptRecord>& prompts,
                             const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                             const std::filesystem::path& prompts_file, unsigned threads) {
  PromptShapes shapes;
  const std::size_t n = prompts.size();
  if (n == 0) return shapes;
  const std::size_t p = prompts.front().positions.size();
  shapes.positions_per_row = static_cast<std::int64_t>(p);
  shapes.n_tokens.assign(n, 0);
  shapes.positions.assign(n * p, 0);
  const std::string name = prompts_file.string();
  const std::size_t parts = std::clamp<std::size_t>(threads, 1, std::max<std::size_t>(1, n / 64));

  // Contiguous slices, one per thread; each stops at its first bad prompt, and the error of the
  // lowest such row is the one thrown, so the message is the one a single thread would give.
  struct Slice {
    std::size_t first_bad = std::numeric_limits<std::size_t>::max();
    std::exception_ptr error;
    std::int32_t max_id = -1;
    std::size_t max_row = 0;
  };
  std::vector<Slice> slices(parts);
  auto work = [&](std::size_t part) {
    Slice& slice = slices[part];
    const std::size_t begin = n * part / parts, end = n * (part + 1) / parts;
    for (std::size_t row = begin; row < end; ++row) {
      try {
        auto prompt = encode_one(prompts[row], p, prompts.front().line, tokenizer, add_special_tokens, name);
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
        slice.first_bad = row;
        slice.error = std::current_exception();
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t part = 1; part < parts; ++part) pool.emplace_back(work, part);
  work(0);
  for (auto& t : pool) t.join();
  for (const Slice& slice : slices) {
    if (slice.error) std::rethrow_exception(slice.error);  // slices are in row order
    if (slice.max_id > shapes.max_token_id) {
      shapes.max_token_id = slice.max_id;
      shapes.max_token_row = slice.max_row;
    }
  }
  return shapes;
}

}  // namespace ndif::plan
