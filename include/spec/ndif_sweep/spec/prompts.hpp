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

/// Where each line of a prompts file's text begins: row r is line r + 1. One trailing newline ends
/// the last line. O(N) offsets, what a run keeps instead of the parsed prompts.
[[nodiscard]] std::vector<std::size_t> line_starts(std::string_view text);

/// Parses row `row` of a prompts file's text (`starts` from line_starts), as parse_prompts parsed
/// it; the checks that need every line (unique ids, no blank line) are parse_prompts' alone. Throws
/// InputError naming the file and line, InternalError for a row past the end.
[[nodiscard]] PromptRecord parse_prompt_line(std::string_view text, const std::vector<std::size_t>& starts,
                                             std::size_t row, const std::filesystem::path& path,
                                             const std::vector<PositionSpec>& default_positions);

}  // namespace ndif::spec
