#include "ndif_sweep/spec/prompt_strings.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>

#include "json_checks.hpp"
#include "line_strings.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/parallel.hpp"
#include "ndif_sweep/core/utf8.hpp"

namespace ndif::spec {
namespace {

using json = nlohmann::json;

// --- the bytes of a block -------------------------------------------------------------------------

struct StringBlockHeader {
  std::uint64_t first, rows;
  std::uint32_t last;  // 0 or 1; 32 bits, so that the header has no padding bytes
  std::int32_t exit_code;
  std::uint64_t message_bytes, string_bytes;
};

[[noreturn]] void not_a_block(const std::string& why) {
  throw InternalError("creating the output file: another rank's block of prompt strings " + why);
}

// --- one line's strings through SAX events ---------------------------------------------------------

/// The strings of one line as nlohmann's parser reports them, without a document: the prompt and
/// the id are taken as they are lexed; meta and positions, small, are made as documents (meta for
/// its canonical text, positions for parse_positions' checks). Whatever is not the plain case of a
/// line parse_prompt accepts (a wrong type, an unknown or repeated key, a number out of range, a
/// syntax error) stops the parse with `plain` false: parse_prompt then reads the line and says why.
class LineStrings final : public nlohmann::json_sax<json> {
 public:
  enum class Field { none, prompt, id, meta, positions };

  bool plain = true;
  bool top_string = false;  ///< the line is a JSON string: the prompt alone
  bool has_text = false, has_id = false, has_meta = false, has_positions = false;
  std::string text, id;
  json meta, positions;

  bool null() override { return scalar(json()); }
  bool boolean(bool value) override { return scalar(json(value)); }
  bool number_integer(number_integer_t value) override {
    if (taking(Field::id)) return take_id(std::to_string(value));
    return scalar(json(value));
  }
  bool number_unsigned(number_unsigned_t value) override {
    if (taking(Field::id)) return take_id(std::to_string(value));
    return scalar(json(value));
  }
  bool number_float(number_float_t value, const string_t&) override {
    if (!std::isfinite(value)) return stop();  // parse_prompt: "a number is out of range"
    return scalar(json(value));
  }
  bool string(string_t& value) override {
    if (depth_ == 0) {
      top_string = has_text = true;
      text = value;
      return true;
    }
    if (taking(Field::prompt)) {
      has_text = true;
      text = value;
      field_ = Field::none;
      return true;
    }
    if (taking(Field::id)) return value.empty() ? stop() : take_id(value);
    return scalar(json(value));
  }
  bool binary(binary_t&) override { return stop(); }
  bool start_object(std::size_t) override {
    if (depth_ == 0 && stack_.empty()) {
      depth_ = 1;
      return true;
    }
    return open(json::object());
  }
  bool key(string_t& value) override {
    if (!stack_.empty()) {
      // Inside meta or positions: every object's keys are unique, as parse_prompt requires.
      if (stack_.back()->contains(value)) return stop();
      key_ = value;
      return true;
    }
    const Field field = value == "prompt"      ? Field::prompt
                        : value == "id"        ? Field::id
                        : value == "meta"      ? Field::meta
                        : value == "positions" ? Field::positions
                                               : Field::none;
    const unsigned bit = 1U << static_cast<unsigned>(field);
    if (field == Field::none || (seen_ & bit) != 0) return stop();
    seen_ |= bit;
    field_ = field;
    return true;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override {
    return depth_ == 0 && stack_.empty() ? stop() : open(json::array());
  }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return stop();
  }

 private:
  [[nodiscard]] bool taking(Field field) const noexcept {
    return depth_ == 1 && stack_.empty() && field_ == field;
  }
  bool stop() {
    plain = false;
    return false;
  }
  bool take_id(std::string value) {
    has_id = true;
    id = std::move(value);
    field_ = Field::none;
    return true;
  }
  /// The value of meta or positions, or a part of one; anything else is not plain.
  json* capture_target() {
    if (!stack_.empty()) {
      json& parent = *stack_.back();
      if (parent.is_array()) {
        parent.push_back(json());
        return &parent.back();
      }
      return &parent[key_];
    }
    if (depth_ == 1 && field_ == Field::meta) {
      has_meta = true;
      return &meta;
    }
    if (depth_ == 1 && field_ == Field::positions) {
      has_positions = true;
      return &positions;
    }
    return nullptr;
  }
  bool scalar(json value) {
    json* target = capture_target();
    if (target == nullptr) return stop();
    *target = std::move(value);
    if (stack_.empty()) field_ = Field::none;
    return true;
  }
  bool open(json container) {
    json* target = capture_target();
    if (target == nullptr) return stop();
    *target = std::move(container);
    stack_.push_back(target);
    return true;
  }
  bool close() {
    if (!stack_.empty()) {
      stack_.pop_back();
      if (stack_.empty()) field_ = Field::none;
      return true;
    }
    depth_ = 0;  // the line's object ends
    return true;
  }

  int depth_ = 0;              ///< 1 inside the line's object
  Field field_ = Field::none;  ///< whose value comes next at the line's top level
  unsigned seen_ = 0;          ///< the top-level keys met, as bits
  std::vector<json*> stack_;   ///< the open containers of meta or positions
  std::string key_;            ///< the key of the next value inside them
};

}  // namespace

bool detail::append_plain(std::string_view line, std::size_t row, const std::filesystem::path& path,
                          StringBlock& into) {
  if (first_invalid_utf8(line)) return false;
  LineStrings strings;
  if (!json::sax_parse(line, &strings) || !strings.plain || !strings.has_text) return false;
  if (strings.has_meta && !strings.meta.is_object()) return false;
  const auto nul = [](const std::string& s) { return s.find('\0') != std::string::npos; };
  if (nul(strings.text) || (strings.has_id && nul(strings.id))) return false;
  if (strings.has_positions) {
    // The checks parse_prompt makes; their errors name the line as its do.
    (void)detail::parse_positions(strings.positions, path.string() + ":" + std::to_string(row + 1) + ": ",
                                  "positions");
  }
  if (!strings.has_id) strings.id = std::to_string(row);
  into.add(strings.text, strings.id, strings.has_meta ? strings.meta.dump() : std::string("{}"));
  return true;
}

std::string_view StringBlock::view(std::size_t k, Column column) const noexcept {
  const std::size_t index = 3 * k + static_cast<std::size_t>(column);
  const std::size_t next = index + 1 < starts.size() ? starts[index + 1] : bytes.size();
  return std::string_view(bytes).substr(starts[index], next - starts[index] - 1);
}

void StringBlock::add(std::string_view row_text, std::string_view row_id, std::string_view row_meta) {
  for (const auto s : {row_text, row_id, row_meta}) {
    starts.push_back(bytes.size());
    bytes.append(s);
    bytes.push_back('\0');
  }
}

void StringBlock::append(const StringBlock& other) {
  const std::size_t base = bytes.size();
  bytes += other.bytes;
  for (const auto start : other.starts) starts.push_back(base + start);
}

StringBlock error_block(std::size_t first, std::exception_ptr error) {
  StringBlock block;
  block.first = first;
  block.last = true;
  block.error = std::move(error);
  return block;
}

std::string encode_string_block(const StringBlock& block) {
  const ErrorReport report = block.error ? report_of(block.error) : ErrorReport{ExitCode::ok, {}};
  const StringBlockHeader header{block.first,
                                 block.rows(),
                                 static_cast<std::uint32_t>(block.last ? 1 : 0),
                                 static_cast<std::int32_t>(report.code),
                                 report.message.size(),
                                 block.bytes.size()};
  std::string out;
  out.reserve(sizeof header + report.message.size() + block.bytes.size());
  out.append(reinterpret_cast<const char*>(&header), sizeof header);
  out += report.message;
  out += block.bytes;
  return out;
}

StringBlock decode_string_block(std::string_view bytes) {
  StringBlockHeader header{};
  if (bytes.size() < sizeof header) not_a_block("is cut short");
  std::memcpy(&header, bytes.data(), sizeof header);
  bytes.remove_prefix(sizeof header);
  if (header.last > 1) not_a_block("has a bad header");
  if (header.message_bytes > bytes.size() || header.string_bytes != bytes.size() - header.message_bytes)
    not_a_block("has the wrong size");
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
  // Three NUL-ended strings a row: the NULs say where each begins, and their count must be the rows'.
  if (header.rows > bytes.size() / 3) not_a_block("holds fewer strings than its rows need");
  const auto rows = static_cast<std::size_t>(header.rows);
  if (!bytes.empty() && bytes.back() != '\0') not_a_block("does not end its last string");
  block.starts.reserve(3 * rows);
  for (std::size_t at = 0; at < bytes.size();) {
    if (block.starts.size() == 3 * rows) not_a_block("holds more strings than its rows");
    block.starts.push_back(at);
    const void* nul = std::memchr(bytes.data() + at, '\0', bytes.size() - at);
    at = static_cast<std::size_t>(static_cast<const char*>(nul) - bytes.data()) + 1;
  }
  if (block.starts.size() != 3 * rows) not_a_block("holds fewer strings than its rows");
  block.bytes.assign(bytes);
  return block;
}

void append_strings(std::string_view line, std::size_t row, const std::filesystem::path& path,
                    const std::vector<PositionSpec>& default_positions, StringBlock& into) {
  if (detail::append_plain(line, row, path, into)) return;
  const auto record = parse_prompt(line, row, path, default_positions);  // throws why, if it refuses it
  into.add(record.text, record.id, record.meta_json);
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
  // Rows while they fit both bounds; a row longer than max_bytes is a block of its own.
  std::size_t count = std::min<std::size_t>(1, end_ - at_);
  while (count < max_rows_ && at_ + count < end_ && file_->line_bytes(at_, count + 1) <= max_bytes_) ++count;
  StringBlock block;
  block.first = at_;
  try {
    const auto lines = file_->lines(at_, count);
    // Contiguous slices on the threads, put together in row order; the first bad row is the block's.
    const std::size_t parts = slice_count(count, threads_, kSliceRows);
    std::vector<StringBlock> slices(parts);
    run_slices(count, parts, [&](std::size_t part, std::size_t from, std::size_t to) {
      auto& slice = slices[part];
      slice.starts.reserve(3 * (to - from));
      slice.bytes.reserve(file_->line_bytes(at_ + from, to - from) + 8 * (to - from));
      for (std::size_t k = from; k < to; ++k)
        append_strings(lines.line(k), at_ + k, file_->path(), default_positions_, slice);
    });
    block = std::move(slices[0]);
    block.first = at_;
    for (std::size_t part = 1; part < parts; ++part) block.append(slices[part]);
  } catch (...) {
    done_ = true;
    return error_block(at_, std::current_exception());
  }
  at_ += count;
  block.last = at_ == end_;
  done_ = block.last;
  return block;
}

}  // namespace ndif::spec
