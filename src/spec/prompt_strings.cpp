#include "ndif_sweep/spec/prompt_strings.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "ndif_sweep/core/error.hpp"

namespace ndif::spec {
namespace {

struct StringBlockHeader {
  std::uint64_t first, rows;
  std::uint32_t last;  // 0 or 1; 32 bits, so that the header has no padding bytes
  std::int32_t exit_code;
  std::uint64_t message_bytes;
};

[[noreturn]] void not_a_block(const std::string& why) {
  throw InternalError("creating the output file: another rank's block of prompt strings " + why);
}

template <typename T>
void append(std::string& out, const T& value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

template <typename T>
T take(std::string_view& in) {
  if (in.size() < sizeof(T)) not_a_block("is cut short");
  T value;
  std::memcpy(&value, in.data(), sizeof value);
  in.remove_prefix(sizeof value);
  return value;
}

void append_column(std::string& out, const std::vector<std::string>& column) {
  for (const auto& s : column) {
    if (s.size() > std::numeric_limits<std::uint32_t>::max())
      throw InternalError("a prompt string of " + std::to_string(s.size()) + " bytes is too long to send");
    append(out, static_cast<std::uint32_t>(s.size()));
  }
  for (const auto& s : column) out += s;
}

std::vector<std::string> take_column(std::string_view& in, std::size_t rows) {
  // Every length is 4 bytes, so `rows` is bounded by what is left before anything is allocated.
  if (rows > in.size() / sizeof(std::uint32_t)) not_a_block("holds fewer lengths than rows");
  std::vector<std::uint32_t> lengths(rows);
  for (auto& length : lengths) length = take<std::uint32_t>(in);
  std::vector<std::string> column;
  column.reserve(rows);
  for (const auto length : lengths) {
    if (length > in.size()) not_a_block("holds fewer bytes than its lengths say");
    column.emplace_back(in.substr(0, length));
    in.remove_prefix(length);
  }
  return column;
}

}  // namespace

std::string encode_string_block(const StringBlock& block) {
  const ErrorReport report = block.error ? report_of(block.error) : ErrorReport{ExitCode::ok, {}};
  std::size_t bytes = sizeof(StringBlockHeader) + report.message.size();
  for (const auto* column : {&block.text, &block.id, &block.meta})
    for (const auto& s : *column) bytes += sizeof(std::uint32_t) + s.size();
  std::string out;
  out.reserve(bytes);
  append(out, StringBlockHeader{block.first, block.rows(), static_cast<std::uint32_t>(block.last ? 1 : 0),
                                static_cast<std::int32_t>(report.code), report.message.size()});
  out += report.message;
  if (block.id.size() != block.rows() || block.meta.size() != block.rows())
    throw InternalError("a block of prompt strings whose columns differ in length");
  append_column(out, block.text);
  append_column(out, block.id);
  append_column(out, block.meta);
  return out;
}

StringBlock decode_string_block(std::string_view bytes) {
  const auto header = take<StringBlockHeader>(bytes);
  if (header.last > 1) not_a_block("has a bad header");
  if (header.message_bytes > bytes.size()) not_a_block("is cut short");
  StringBlock block;
  block.first = header.first;
  block.last = header.last != 0;
  std::string message(bytes.substr(0, header.message_bytes));
  bytes.remove_prefix(header.message_bytes);
  if (header.exit_code != 0) {
    if (!block.last || header.rows != 0 || !bytes.empty()) not_a_block("reports an error but goes on");
    block.error = error_from(ErrorReport{static_cast<ExitCode>(header.exit_code), std::move(message)});
    return block;
  }
  if (!message.empty()) not_a_block("has a message without an error");
  const auto rows = static_cast<std::size_t>(header.rows);
  block.text = take_column(bytes, rows);
  block.id = take_column(bytes, rows);
  block.meta = take_column(bytes, rows);
  if (!bytes.empty()) not_a_block("has bytes past its strings");
  return block;
}

StringBlockReader::StringBlockReader(std::shared_ptr<const PromptsFile> file,
                                     std::vector<PositionSpec> default_positions, std::size_t first,
                                     std::size_t end, unsigned threads, std::size_t max_rows,
                                     std::size_t max_bytes)
    : file_(std::move(file)),
      default_positions_(std::move(default_positions)),
      at_(first),
      end_(end),
      threads_(threads),
      max_rows_(std::max<std::size_t>(max_rows, 1)),
      max_bytes_(max_bytes) {
  if (!file_ || first > end || end > file_->rows())
    throw InternalError("StringBlockReader: rows " + std::to_string(first) + " to " + std::to_string(end) +
                        " are not rows of the prompts file");
}

StringBlock StringBlockReader::next() {
  if (done_) throw InternalError("StringBlockReader::next after the last block");
  StringBlock block;
  block.first = at_;
  // Rows while they fit both bounds; a row longer than max_bytes is a block of its own.
  std::size_t count = std::min<std::size_t>(1, end_ - at_);
  while (count < max_rows_ && at_ + count < end_ && file_->line_bytes(at_, count + 1) <= max_bytes_) ++count;
  try {
    auto records = parse_lines(file_->lines(at_, count), file_->path(), default_positions_, threads_);
    for (auto* column : {&block.text, &block.id, &block.meta}) column->reserve(records.size());
    for (auto& record : records) {
      block.text.push_back(std::move(record.text));
      block.id.push_back(std::move(record.id));
      block.meta.push_back(std::move(record.meta_json));
    }
  } catch (...) {
    block = StringBlock{at_, {}, {}, {}, true, std::current_exception()};
    done_ = true;
    return block;
  }
  at_ += count;
  block.last = at_ == end_;
  done_ = block.last;
  return block;
}

}  // namespace ndif::spec
