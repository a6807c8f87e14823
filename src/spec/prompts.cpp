#include "ndif_sweep/spec/prompts.hpp"

#include <string_view>
#include <unordered_map>

#include "json_checks.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"
#include "ndif_sweep/core/utf8.hpp"

namespace ndif::spec {

using detail::fail;
using nlohmann::json;

namespace {

bool is_blank(std::string_view line) { return line.find_first_not_of(" \t\r") == std::string_view::npos; }

/// The output file keeps text and id as HDF5 strings, which end at their first NUL: "a\u0000b" would
/// be stored as "a", and two ids that differ after a NUL as one id. (meta is stored as JSON text,
/// where a NUL stays escaped.)
void refuse_nul(const std::string& value, const std::string& prefix, const char* what) {
  if (value.find('\0') != std::string::npos)
    fail(prefix, std::string(what) +
                     " holds the character U+0000 (NUL), which the output file's strings cannot hold; "
                     "remove it");
}

PromptRecord parse_line(std::string_view line, std::size_t line_number, const std::string& prefix,
                        const std::vector<PositionSpec>& default_positions) {
  if (const auto bad = first_invalid_utf8(line)) {
    fail(prefix,
         "invalid UTF-8 at byte " + std::to_string(*bad + 1) + " of the line; the file must be UTF-8");
  }
  json value;
  try {
    value = detail::parse_unique_keys(line, prefix);
  } catch (const json::parse_error& error) {
    const auto location = detail::locate_byte(line, error.byte);
    fail(prefix, "not valid JSON at column " + std::to_string(location.column) + ": " +
                     detail::parse_error_reason(error));
  }
  PromptRecord record;
  record.line = line_number;
  record.id = std::to_string(line_number - 1);
  record.positions = default_positions;
  if (value.is_string()) {
    record.text = value.get<std::string>();
    refuse_nul(record.text, prefix, "the prompt");
    return record;
  }
  if (!value.is_object()) {
    fail(prefix, "a line must be a JSON string (the prompt) or an object with \"prompt\", got " +
                     detail::describe(value));
  }
  const detail::ObjectReader reader(value, prefix, "", {"prompt", "positions", "id", "meta"});
  const json* prompt = reader.find("prompt");
  if (prompt == nullptr) reader.missing("prompt", "the prompt text");
  if (!prompt->is_string()) reader.wrong("prompt", "a string");
  record.text = prompt->get<std::string>();
  refuse_nul(record.text, prefix, "\"prompt\"");
  if (const json* positions = reader.find("positions")) {
    record.positions = detail::parse_positions(*positions, prefix, "positions");
  }
  if (const json* id = reader.find("id")) {
    if (id->is_number_integer()) {
      record.id = id->dump();
    } else if (id->is_string() && !id->get_ref<const std::string&>().empty()) {
      record.id = id->get<std::string>();
      refuse_nul(record.id, prefix, "\"id\"");
    } else {
      reader.wrong("id", "a non-empty string or an integer");
    }
  }
  if (const json* meta = reader.find("meta")) {
    if (!meta->is_object()) reader.wrong("meta", "a JSON object");
    record.meta_json = meta->dump();
  }
  return record;
}

}  // namespace

std::string duplicate_id_message(const std::string& id, std::size_t first_line) {
  return "id \"" + id + "\" is already the id of line " + std::to_string(first_line) +
         " (an absent id is the row number, from 0); ids must be unique";
}

PromptRecord parse_prompt(std::string_view line, std::size_t row, const std::filesystem::path& path,
                          const std::vector<PositionSpec>& default_positions) {
  const std::string prefix = path.string() + ":" + std::to_string(row + 1) + ": ";
  if (is_blank(line))
    fail(prefix,
         "blank line; remove it (line i holds row i-1 of the output, so every line must be a prompt)");
  return parse_line(line, row + 1, prefix, default_positions);
}

std::vector<PromptRecord> parse_prompts(const std::string& text, const std::filesystem::path& path,
                                        const std::vector<PositionSpec>& default_positions) {
  const std::string name = path.string();
  std::string_view rest = text;
  // One newline ends the last line; anything more would be a blank line.
  if (rest.ends_with('\n')) rest.remove_suffix(1);
  if (rest.empty()) fail(name + ": ", "the file is empty; it needs one prompt per line");

  std::vector<PromptRecord> records;
  std::unordered_map<std::string, std::size_t> line_of_id;
  std::size_t line_number = 0;
  for (std::size_t begin = 0; begin <= rest.size();) {
    const auto end = std::min(rest.find('\n', begin), rest.size());
    const std::string_view line = rest.substr(begin, end - begin);
    begin = end + 1;
    ++line_number;
    PromptRecord record = parse_prompt(line, line_number - 1, path, default_positions);
    const auto [it, inserted] = line_of_id.emplace(record.id, line_number);
    if (!inserted)
      fail(name + ":" + std::to_string(line_number) + ": ", duplicate_id_message(record.id, it->second));
    records.push_back(std::move(record));
  }
  return records;
}

std::vector<PromptRecord> read_prompts(const std::filesystem::path& path,
                                       const std::vector<PositionSpec>& default_positions) {
  return parse_prompts(read_file(path, "prompts file"), path, default_positions);
}

}  // namespace ndif::spec
