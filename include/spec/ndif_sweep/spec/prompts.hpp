#pragma once
/// \file
/// The prompts file (docs/user-guide.md section 3, a contract): JSON Lines, one prompt per line.

#include <filesystem>
#include <string>
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

}  // namespace ndif::spec
