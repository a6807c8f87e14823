#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/core/parallel.hpp"
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

std::uint64_t id_hash(const std::string& id) noexcept {
  return xxh3_64(std::as_bytes(std::span<const char>(id.data(), id.size())));
}

/// Where measure_range puts what it measures: row r goes to index r - base of each array.
struct MeasureInto {
  std::size_t base = 0;
  std::span<std::int32_t> n_tokens;
  std::span<std::int32_t> positions;   ///< P per row
  std::uint64_t* id_hashes = nullptr;  ///< or nullptr: ids are not hashed
  std::int32_t max_token_id = -1;
  std::size_t max_token_row = 0;
};

/// Measures rows [begin, end) into `into` on `threads` threads (contiguous slices), the record of
/// a row made by `record_at(row, scratch)`. Each slice stops at its first bad row; the lowest is
/// returned, so the error is the one a single thread would meet first.
template <typename RecordAt>
RowError measure_range(std::size_t begin, std::size_t end, unsigned threads, const RecordAt& record_at,
                       std::size_t p, const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                       const std::string& name, MeasureInto& into) {
  const std::size_t n = end - begin;
  const std::size_t parts = slice_count(n, threads, 64);
  struct Slice {
    RowError bad;
    std::int32_t max_id = -1;
    std::size_t max_row = 0;
  };
  std::vector<Slice> slices(parts);
  // Each slice keeps its first bad row instead of throwing: the error needs its row.
  run_slices(n, parts, [&](std::size_t part, std::size_t from, std::size_t to) {
    Slice& slice = slices[part];
    spec::PromptRecord scratch;
    for (std::size_t row = begin + from, last = begin + to; row < last; ++row) {
      try {
        const spec::PromptRecord& record = record_at(row, scratch);
        const std::size_t at = row - into.base;
        if (into.id_hashes != nullptr) into.id_hashes[at] = id_hash(record.id);
        auto prompt = encode_one(record, p, 1, tokenizer, add_special_tokens, name);
        into.n_tokens[at] = static_cast<std::int32_t>(prompt.ids.size());
        if (!into.positions.empty())
          std::copy(prompt.positions.begin(), prompt.positions.end(),
                    into.positions.begin() + static_cast<std::ptrdiff_t>(at * p));
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
  });
  for (const Slice& slice : slices) {
    if (slice.bad.error) return slice.bad;  // slices are in row order
    if (slice.max_id > into.max_token_id) {
      into.max_token_id = slice.max_id;
      into.max_token_row = slice.max_row;
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
  MeasureInto into{0, shapes.n_tokens, shapes.positions};
  const auto bad = measure_range(
      0, n, threads,
      [&](std::size_t row, spec::PromptRecord&) -> const spec::PromptRecord& { return prompts[row]; }, p,
      tokenizer, add_special_tokens, prompts_file.string(), into);
  if (bad.error) std::rethrow_exception(bad.error);
  shapes.max_token_id = into.max_token_id;
  shapes.max_token_row = into.max_token_row;
  return shapes;
}

std::size_t positions_per_row(const spec::PromptsFile& file,
                              const std::vector<spec::PositionSpec>& default_positions) {
  return spec::parse_prompt(file.line(0), 0, file.path(), default_positions).positions.size();
}

std::pair<std::size_t, std::size_t> scan_part_rows(std::size_t rows, std::size_t part, std::size_t parts) {
  return {rows * part / parts, rows * (part + 1) / parts};
}

ScanPart scan_part(const spec::PromptsFile& file, const std::vector<spec::PositionSpec>& default_positions,
                   const tokenizer::Tokenizer& tokenizer, bool add_special_tokens, std::size_t p,
                   std::size_t first, std::size_t end, unsigned threads, std::size_t block_rows,
                   bool keep_positions) {
  ScanPart part;
  part.first = first;
  part.end = end;
  const std::size_t n = end - first;
  const std::string name = file.path().string();
  block_rows = std::max<std::size_t>(block_rows, 1);
  RowError bad;
  MeasureInto into;
  // Nothing escapes: a rank whose part threw would leave rank 0 waiting for it. A block that cannot
  // be read (a line changed since rank 0 indexed it, another file on this node) is bad from its
  // first row, and so is a part that cannot be held.
  std::size_t at = first;
  try {
    part.n_tokens.assign(n, 0);
    if (keep_positions) part.positions.assign(n * p, 0);
    part.id_hashes.assign(n, 0);
    into = MeasureInto{first, part.n_tokens, part.positions, part.id_hashes.data()};
    for (; at < end && !bad.error; at += block_rows) {
      const auto block = file.lines(at, std::min(block_rows, end - at));
      bad = measure_range(
          at, at + block.size(), threads,
          [&](std::size_t row, spec::PromptRecord& scratch) -> const spec::PromptRecord& {
            scratch = spec::parse_prompt(block.line(row - at), row, file.path(), default_positions);
            return scratch;
          },
          p, tokenizer, add_special_tokens, name, into);
    }
  } catch (...) {
    bad = RowError{at, std::current_exception()};
  }
  part.max_token_id = into.max_token_id;
  part.max_token_row = into.max_token_row;
  if (bad.error) {
    // Only the rows before the bad one count: what follows it is never planned.
    part.end = bad.row;
    part.n_tokens.resize(bad.row - first);
    if (keep_positions) part.positions.resize((bad.row - first) * p);
    part.id_hashes.resize(bad.row - first);
    part.bad_row = bad.row;
    part.error = bad.error;
  }
  return part;
}

namespace {

/// The bytes of a ScanPart: a header of u64 (first, end, bad_row, max_token_row, P), i32
/// max_token_id, i32 exit code of the error, u64 length of its message, then the message, the
/// lengths and the id hashes, all little-endian as this machine's memory. P travels so that a part
/// measured for another job is refused; the positions themselves stay with the rank.
struct ScanPartHeader {
  std::uint64_t first, end, bad_row, max_token_row, p;
  std::int32_t max_token_id, exit_code;
  std::uint64_t message_bytes;
};

template <typename T>
void append(std::string& out, const T* data, std::size_t count) {
  if (count == 0) return;  // an empty vector's data() may be null
  out.append(reinterpret_cast<const char*>(data), count * sizeof(T));
}

template <typename T>
void take(std::string_view& in, T* data, std::size_t count) {
  const std::size_t bytes = count * sizeof(T);
  if (in.size() < bytes) throw InternalError("planning: another rank's part of the scan is cut short");
  if (bytes == 0) return;  // an empty vector's data() may be null
  std::memcpy(data, in.data(), bytes);
  in.remove_prefix(bytes);
}

}  // namespace

std::string encode_scan_part(const ScanPart& part, std::size_t p) {
  const ErrorReport report = part.error ? report_of(part.error) : ErrorReport{ExitCode::ok, {}};
  const auto& message = report.message;
  const int code = static_cast<int>(report.code);
  const ScanPartHeader header{part.first, part.end,          part.bad_row, part.max_token_row,
                              p,          part.max_token_id, code,         message.size()};
  std::string out;
  out.reserve(sizeof header + message.size() + part.n_tokens.size() * (4 + 8));
  append(out, &header, 1);
  out += message;
  append(out, part.n_tokens.data(), part.n_tokens.size());
  append(out, part.id_hashes.data(), part.id_hashes.size());
  return out;
}

ScanPart decode_scan_part(std::string_view bytes, std::size_t p) {
  ScanPartHeader header{};
  take(bytes, &header, 1);
  // A bad part ends at its bad row.
  if (header.p != p || header.end < header.first || header.message_bytes > bytes.size() ||
      (header.exit_code != 0) != (header.bad_row != ScanPart::kNoBadRow) ||
      (header.exit_code != 0 && header.bad_row != header.end))
    throw InternalError("planning: another rank's part of the scan does not fit this job");
  ScanPart part;
  part.first = header.first;
  part.end = header.end;
  part.bad_row = header.bad_row;
  part.max_token_row = header.max_token_row;
  part.max_token_id = header.max_token_id;
  std::string message(bytes.substr(0, header.message_bytes));
  bytes.remove_prefix(header.message_bytes);
  const std::size_t n = part.end - part.first;
  const std::size_t row_bytes = 4 + 8;
  if (n > bytes.size() / row_bytes || bytes.size() != n * row_bytes)
    throw InternalError("planning: another rank's part of the scan has the wrong size");
  part.n_tokens.resize(n);
  part.id_hashes.resize(n);
  take(bytes, part.n_tokens.data(), n);
  take(bytes, part.id_hashes.data(), n);
  if (header.exit_code != 0)
    part.error = error_from(ErrorReport{static_cast<ExitCode>(header.exit_code), std::move(message)});
  return part;
}

ScanMerge::ScanMerge(std::size_t rows, std::size_t p) : rows_(rows), p_(p) {}

void ScanMerge::add(ScanPart part) {
  if (bad_error_) return;  // rows after a bad one are never planned
  if (part.first != next_ || part.end > rows_)
    throw InternalError("planning: a part of the scan starts at row " + std::to_string(part.first) +
                        " but the next row to merge is " + std::to_string(next_));
  if (part.first == 0 && part.end == rows_ && !part.error) {
    // One part of every row (a single rank): take its lengths as they are.
    shapes_.n_tokens = std::move(part.n_tokens);
  } else {
    if (shapes_.n_tokens.empty()) shapes_.n_tokens.assign(rows_, 0);
    std::copy(part.n_tokens.begin(), part.n_tokens.end(),
              shapes_.n_tokens.begin() + static_cast<std::ptrdiff_t>(part.first));
  }
  if (keys_.empty()) keys_.reserve(rows_);
  for (std::size_t k = 0; k < part.id_hashes.size(); ++k)
    keys_.push_back(IdKey{part.id_hashes[k], part.first + k});
  std::vector<std::uint64_t>().swap(part.id_hashes);
  if (part.max_token_id > shapes_.max_token_id) {
    shapes_.max_token_id = part.max_token_id;
    shapes_.max_token_row = part.max_token_row;
  }
  next_ = part.end;
  if (part.error) {
    bad_row_ = part.bad_row;
    bad_error_ = part.error;
  }
}

PromptShapes ScanMerge::finish(const spec::PromptsFile& file,
                               const std::vector<spec::PositionSpec>& default_positions) && {
  if (!bad_error_ && next_ != rows_)
    throw InternalError("planning: the parts of the scan do not cover every prompt");
  // Every row before the first bad one has its id hash; a repeated id there comes first.
  const auto repeat = first_repeated_id(keys_, bad_error_ ? bad_row_ : rows_, file, default_positions);
  std::vector<IdKey>().swap(keys_);
  if (repeat.error) std::rethrow_exception(repeat.error);
  if (bad_error_) std::rethrow_exception(bad_error_);
  shapes_.positions_per_row = static_cast<std::int64_t>(p_);
  if (shapes_.n_tokens.empty()) shapes_.n_tokens.assign(rows_, 0);
  return std::move(shapes_);
}

PromptShapes scan_prompts(const spec::PromptsFile& file,
                          const std::vector<spec::PositionSpec>& default_positions,
                          const tokenizer::Tokenizer& tokenizer, bool add_special_tokens, unsigned threads,
                          std::size_t block_rows) {
  // Row 0 fixes P; when it is bad, it is the first bad row.
  const std::size_t p = positions_per_row(file, default_positions);
  ScanMerge merge(file.rows(), p);
  merge.add(scan_part(file, default_positions, tokenizer, add_special_tokens, p, 0, file.rows(), threads,
                      block_rows, false));
  return std::move(merge).finish(file, default_positions);
}

}  // namespace ndif::plan
