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
/// read. They lie back to back in one buffer, each followed by a NUL, so that a block of thousands
/// of rows is two allocations and its strings can be handed to HDF5 as C strings where they lie
/// (none holds a NUL: parse_prompt refuses one in a prompt or an id, and meta is JSON text, where a
/// NUL is escaped).
struct StringBlock {
  /// Which of a row's strings.
  enum class Column : std::size_t { text = 0, id = 1, meta = 2 };

  std::size_t first = 0;
  std::string bytes;                ///< text, id and meta of each row, row after row, each NUL-ended
  std::vector<std::size_t> starts;  ///< where each string begins in `bytes`: three a row
  bool last = false;                ///< nothing follows it from the same reader
  std::exception_ptr error;         ///< rows from `first` on could not be read: no strings, last

  [[nodiscard]] std::size_t rows() const noexcept { return starts.size() / 3; }
  /// Row k's string in `column`, as a NUL-ended C string, valid while the block is unchanged.
  [[nodiscard]] const char* c_str(std::size_t k, Column column) const noexcept {
    return bytes.data() + starts[3 * k + static_cast<std::size_t>(column)];
  }
  /// The same without its NUL.
  [[nodiscard]] std::string_view view(std::size_t k, Column column) const noexcept;
  /// Appends a row (none of the three may hold a NUL).
  void add(std::string_view row_text, std::string_view row_id, std::string_view row_meta);
  /// Appends every row of `other` (which must not hold an error).
  void append(const StringBlock& other);
};

/// A block with `error` as its only content: rows from `first` on could not be read.
[[nodiscard]] StringBlock error_block(std::size_t first, std::exception_ptr error);

/// The bytes of a block: a header of u64 first, u64 rows, u32 last (0 or 1), i32 exit code of the
/// error, u64 length of its message, u64 length of the strings; the message; the strings as they lie
/// in `bytes`. Little-endian as this machine's memory (the ranks of one run run the same binary).
[[nodiscard]] std::string encode_string_block(const StringBlock& block);

/// The block `bytes` hold. The bytes came from another process, so everything is checked: sizes
/// that do not add up, strings that are not three a row or not NUL-ended, an error block that holds
/// strings or is not the last. Throws InternalError for bytes that are not a block.
[[nodiscard]] StringBlock decode_string_block(std::string_view bytes);

/// Row `row`'s text, id and meta from its line, exactly as parse_prompt gives them (and its
/// errors), appended to `into`. A line that parse_prompt accepts is read with nlohmann's SAX
/// interface, keeping only these strings (no document, no positions; a meta object is the one value
/// made as a document, for its canonical text); anything else goes to parse_prompt itself, so that a
/// line it refuses is refused with its message. The fast path skips the checks that only positions
/// need: a reader of lines planning accepted (their hashes are checked as they are read) gets what
/// parse_prompt gives.
void append_strings(std::string_view line, std::size_t row, const std::filesystem::path& path,
                    const std::vector<PositionSpec>& default_positions, StringBlock& into);

/// Reads the strings of rows [first, end) of a prompts file (append_strings, on `threads` threads),
/// in blocks of at most `max_rows` rows and `max_bytes` bytes of lines (a longer line is a block of
/// its own), so that what a rank holds does not grow with the prompts.
class StringBlockReader {
 public:
  static constexpr std::size_t kMaxRows = 16384;
  static constexpr std::size_t kMaxBytes = std::size_t{4} << 20;
  /// The fewest rows a thread of its own is worth (core::slice_count).
  static constexpr std::size_t kSliceRows = 256;

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
