#pragma once
/// \file
/// The prompts file (docs/user-guide.md section 3, a contract): JSON Lines, one prompt per line.

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/spec/job_spec.hpp"

namespace ndif::spec {

/// One line of the prompts file.
struct PromptRecord {
  std::size_t line = 0;  ///< 1-based line number in the file, for messages
  std::string text;
  std::string id;                       ///< given, or the row number (from 0) as a string
  std::string meta_json = "{}";         ///< the "meta" object serialised, "{}" when absent
  std::vector<PositionSpec> positions;  ///< given, or the job's default positions
};

/// Reads and validates a prompts file. Throws InputError naming the file, the line and the
/// problem: not JSON, wrong types, unknown keys, duplicate ids, invalid UTF-8, an empty file.
[[nodiscard]] std::vector<PromptRecord> read_prompts(const std::filesystem::path& path,
                                                     const std::vector<PositionSpec>& default_positions);

/// Same, from the file's text; `path` is used in messages.
[[nodiscard]] std::vector<PromptRecord> parse_prompts(const std::string& text,
                                                      const std::filesystem::path& path,
                                                      const std::vector<PositionSpec>& default_positions);

/// Parses row `row` of a prompts file from its line (without the newline), as parse_prompts
/// parses it; uniqueness of ids needs every line and is checked by parse_prompts and
/// plan::scan_prompts. Throws InputError naming the file and line (row + 1).
[[nodiscard]] PromptRecord parse_prompt(std::string_view line, std::size_t row,
                                        const std::filesystem::path& path,
                                        const std::vector<PositionSpec>& default_positions);

/// The message for an id that line `first_line` already has (the file and line of the repeat
/// go before it).
[[nodiscard]] std::string duplicate_id_message(const std::string& id, std::size_t first_line);

}  // namespace ndif::spec
