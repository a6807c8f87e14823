#pragma once
/// \file
/// The prompts file as a job keeps it: read once to index it (where each line begins, a hash of
/// each line, the SHA-256 of the whole), then read again by offset, a block of lines or one line at
/// a time. Its text is never held whole: what a job keeps of N prompts is 16 bytes each.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/spec/prompts.hpp"

namespace ndif::spec {

/// Consecutive lines of a prompts file read in one call, back to back in `text` without their
/// newlines.
struct LineBlock {
  std::size_t first_row = 0;
  std::string text;
  std::vector<std::size_t> begin;  ///< one offset into `text` per line, and one past the last line

  [[nodiscard]] std::size_t size() const noexcept { return begin.empty() ? 0 : begin.size() - 1; }
  /// Line `k` of the block (row first_row + k of the file).
  [[nodiscard]] std::string_view line(std::size_t k) const noexcept {
    return std::string_view(text).substr(begin[k], begin[k + 1] - begin[k]);
  }
};

/// An indexed prompts file. Row r is line r + 1; one newline ends the last line (a second one is a
/// blank line). The file stays open, so a file replaced under the same name (an editor's save, a
/// rename) is not what is read; a file changed in place is caught by the line hashes.
class PromptsFile {
 public:
  /// Reads `path` once, in blocks. Throws InputError naming the file when it is a directory, cannot
  /// be read, or holds no prompt.
  [[nodiscard]] static PromptsFile index(const std::filesystem::path& path);

  [[nodiscard]] std::size_t rows() const noexcept { return starts_.empty() ? 0 : starts_.size() - 1; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
  /// SHA-256 of the bytes indexed, as 64 lowercase hex digits.
  [[nodiscard]] const std::string& sha256() const noexcept { return sha256_; }
  /// Size of the file as indexed, in bytes.
  [[nodiscard]] std::uint64_t bytes() const noexcept { return bytes_; }

  /// Rows [first, first + count), with one read. Throws InputError naming the file and the line when
  /// a line is not what was indexed (the job's identity is the bytes it hashed), InternalError for
  /// rows past the end.
  [[nodiscard]] LineBlock lines(std::size_t first, std::size_t count) const;
  /// Bytes of rows [first, first + count) in the file, their newlines included, from the index
  /// (nothing is read): what lines() reads for them. Throws InternalError for rows past the end.
  [[nodiscard]] std::uint64_t line_bytes(std::size_t first, std::size_t count) const;
  /// Row `row`'s line. Throws as lines().
  [[nodiscard]] std::string line(std::size_t row) const;

  /// The index as bytes, for another process to read the same file without reading it whole
  /// (rank 0 broadcasts it): from_index(path, index_bytes()) reads what this object reads.
  [[nodiscard]] std::string index_bytes() const;
  /// Opens `path` with an index made by index_bytes() elsewhere. Throws InputError naming the file
  /// when it cannot be opened or its size is not the indexed one (every line read is still checked
  /// against its hash), InternalError when `index` is not an index.
  [[nodiscard]] static PromptsFile from_index(const std::filesystem::path& path, std::string_view index);

 private:
  struct Descriptor;
  std::shared_ptr<const Descriptor> fd_;
  std::filesystem::path path_;
  /// N + 1 offsets: where each line begins, then one past the last line's end as if it had a
  /// newline; line r is [starts_[r], starts_[r + 1] - 1).
  std::vector<std::uint64_t> starts_;
  std::vector<std::uint64_t> hashes_;  ///< N: XXH3-64 of each line's bytes
  std::string sha256_;
  std::uint64_t bytes_ = 0;
};

/// Every line of `block` parsed as parse_prompt parses it, on `threads` threads. Throws the error of
/// the block's first bad line.
[[nodiscard]] std::vector<PromptRecord> parse_lines(const LineBlock& block, const std::filesystem::path& path,
                                                    const std::vector<PositionSpec>& default_positions,
                                                    unsigned threads);

}  // namespace ndif::spec
