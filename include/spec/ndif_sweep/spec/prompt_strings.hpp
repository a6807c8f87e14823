#pragma once
/// \file
/// The prompts' strings (text, id, meta) on their way into the output file. HDF5 cannot write
/// variable-length strings through MPI-IO, so one rank writes them all; every rank reads and parses
/// the lines of its own part of the prompts file and sends them to that rank a block at a time
/// (docs/design.md, "One batch", step 2). Here: the blocks, their bytes between ranks, and the
/// reader that cuts a range of rows into blocks. No MPI.

#include <cstddef>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/spec/prompts.hpp"
#include "ndif_sweep/spec/prompts_file.hpp"

namespace ndif::spec {

/// The strings of consecutive prompts from row `first` on, in row order, or why they could not be
/// read.
struct StringBlock {
  std::size_t first = 0;
  std::vector<std::string> text, id, meta;  ///< one entry a row each; meta is a JSON object's text
  bool last = false;                        ///< nothing follows it from the same reader
  std::exception_ptr error;                 ///< rows from `first` on could not be read: no strings, last

  [[nodiscard]] std::size_t rows() const noexcept { return text.size(); }
};

/// The bytes of a block: a header of u64 first, u64 rows, u32 last (0 or 1), i32 exit code of the error, u64
/// length of its message; the message; then for each column (text, id, meta) `rows` u32 lengths
/// followed by the strings back to back. Little-endian as this machine's memory (ranks of one run
/// run the same binary). Throws InternalError for a string of 4 GiB or more.
[[nodiscard]] std::string encode_string_block(const StringBlock& block);

/// The block `bytes` hold. The bytes came from another process, so everything is checked: sizes
/// that do not add up to the bytes, an error block that holds strings or is not the last, a row
/// count that would not fit them. Throws InternalError for bytes that are not a block.
[[nodiscard]] StringBlock decode_string_block(std::string_view bytes);

/// Reads the strings of rows [first, end) of a prompts file, each line parsed as parse_prompt parses
/// it (on `threads` threads), in blocks of at most `max_rows` rows and `max_bytes` bytes of lines (a
/// longer line is a block of its own), so that what a rank holds does not grow with the prompts.
class StringBlockReader {
 public:
  static constexpr std::size_t kMaxRows = 16384;
  static constexpr std::size_t kMaxBytes = std::size_t{4} << 20;

  /// A reader of rows [first, end); InternalError when they are not rows of `file`.
  StringBlockReader(std::shared_ptr<const PromptsFile> file, std::vector<PositionSpec> default_positions,
                    std::size_t first, std::size_t end, unsigned threads, std::size_t max_rows = kMaxRows,
                    std::size_t max_bytes = kMaxBytes);

  /// Whether the last block, or an error block, was returned: there is no next one.
  [[nodiscard]] bool done() const noexcept { return done_; }
  /// The next block; for an empty range, one empty block that is the last. Never throws for a line
  /// that cannot be read or parsed (changed since it was indexed, another copy of the file): that is
  /// a block with `error`, the last. Throws InternalError when done().
  [[nodiscard]] StringBlock next();

 private:
  std::shared_ptr<const PromptsFile> file_;
  std::vector<PositionSpec> default_positions_;
  std::size_t at_, end_;
  unsigned threads_;
  std::size_t max_rows_, max_bytes_;
  bool done_ = false;
};

}  // namespace ndif::spec
