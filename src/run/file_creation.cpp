#include "ndif_sweep/run/file_creation.hpp"

#include <fmt/format.h>

#include <functional>
#include <future>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/plan/batch_plan.hpp"

namespace ndif::run {
namespace {

// Rank 0's words to each other rank. The first, before the rank sends anything: send your part now,
// or send nothing. To a rank told to send, a second once rank 0 needs no more of it: stop sending
// (a rank still sending ends its part with an empty last block), and go.
constexpr std::string_view kSend = "send";
constexpr std::string_view kStop = "stop";
constexpr std::string_view kEnd = "end";

/// Ends every rank after a failure that leaves the exchange broken (a send MPI still holds, a word
/// not taken): no rank can be left waiting for what will not come.
[[noreturn]] void end_every_rank(const Communicator& comm, const char* what) {
  comm.abort(1, fmt::format("while the output file was created: {}", what));
}

/// A block's bytes; a block that cannot be encoded becomes an error block, so that the receiver
/// always learns where the stream ends.
std::string encoded(const spec::StringBlock& block) {
  try {
    return spec::encode_string_block(block);
  } catch (...) {
    return spec::encode_string_block(spec::error_block(block.first, std::current_exception()));
  }
}

/// The next block of `reader`, or an error block where it could not be read.
spec::StringBlock next_block(spec::StringBlockReader& reader, std::size_t at) {
  try {
    return reader.next();
  } catch (...) {
    return spec::error_block(at, std::current_exception());
  }
}

/// The next block of `reader` (an error block when `reader` is empty), read on a thread of its own;
/// where no thread can be started, read here and handed back ready.
std::future<spec::StringBlock> read_on_thread(std::optional<spec::StringBlockReader>& reader,
                                              std::size_t at) {
  const auto read = [&reader, at] {
    if (!reader)
      return spec::error_block(
          at, std::make_exception_ptr(InternalError("the prompts file could not be opened")));
    return next_block(*reader, at);
  };
  try {
    return std::async(std::launch::async, read);
  } catch (...) {
    std::promise<spec::StringBlock> now;
    now.set_value(read());
    return now.get_future();
  }
}

/// What every rank but 0 does in step 1: read its part, and send it when rank 0 says so.
void send_part(const Communicator& comm, const BatchTokenizer& prompts, unsigned threads,
               std::size_t block_rows, PartSent& sent) {
  const auto [first, end] =
      plan::scan_part_rows(prompts.prompts_file->rows(), static_cast<std::size_t>(comm.rank()),
                           static_cast<std::size_t>(comm.size()));
  std::optional<spec::StringBlockReader> reader;
  spec::StringBlock block;
  try {
    reader.emplace(prompts.prompts_file, prompts.default_positions, first, end, threads, block_rows);
    // Read while rank 0 writes the other ranks' blocks.
    block = reader->next();
  } catch (...) {
    block = spec::error_block(first, std::current_exception());
  }
  // From here on this rank ends with a last block sent and rank 0's words taken, whatever fails.
  try {
    if (comm.receive(0, Tag::strings) != kSend) return;
    sent.asked = true;
    // The next block is read on a thread while the main thread waits for rank 0 to take the one
    // before (it takes one block of each rank in turn); the main thread's polls keep the send going.
    FramedSend sending;
    bool ended = false;  // rank 0's second word came
    while (true) {
      const bool last = block.last;
      const std::size_t next = block.first + block.rows();
      sending.payload = encoded(block);
      sent.rows += block.rows();
      block = {};
      comm.start_framed_send(0, Tag::strings, sending);
      if (last) break;
      auto ahead = read_on_thread(reader, next);
      comm.wait(sending);
      block = ahead.get();
      if (comm.poll(0, Tag::strings)) {
        // Rank 0 failed and needs no more: the part ends here.
        ended = sent.ended_early = true;
        block = spec::StringBlock{};
        block.first = next;
        block.last = true;
      }
    }
    comm.wait(sending);
    if (!ended) (void)comm.receive(0, Tag::strings);
  } catch (const std::exception& e) {
    end_every_rank(comm, e.what());
  }
}

/// Rank 0's side of step 1: the source of every row's strings, a block of each rank's part in turn
/// (so that every rank reads its next block while rank 0 writes the others'), and the end of the
/// exchange with every other rank.
class StringsOfEveryRank {
 public:
  StringsOfEveryRank(const Communicator& comm, const BatchTokenizer& prompts, unsigned threads,
                     std::size_t block_rows)
      : comm_(comm), parts_(static_cast<std::size_t>(comm.size())) {
    const std::size_t rows = prompts.prompts_file->rows();
    for (std::size_t rank = 0; rank < parts_.size(); ++rank) {
      auto& part = parts_[rank];
      std::tie(part.next, part.end) = plan::scan_part_rows(rows, rank, parts_.size());
      part.stream = part.next == part.end && rank == 0 ? Stream::ended : Stream::waiting;
    }
    // Nothing here may throw, as the ranks wait for a word from rank 0: a reader that cannot be made
    // is an error block, met as rank 0's first block.
    try {
      own_.emplace(prompts.prompts_file, prompts.default_positions, parts_[0].next, parts_[0].end, threads,
                   block_rows);
      if (parts_[0].stream != Stream::ended) ahead_ = read_on_thread(own_, parts_[0].next);
    } catch (...) {
      std::promise<spec::StringBlock> failed;
      failed.set_value(spec::error_block(parts_[0].next, std::current_exception()));
      ahead_ = failed.get_future();
    }
  }

  StringsOfEveryRank(const StringsOfEveryRank&) = delete;
  StringsOfEveryRank& operator=(const StringsOfEveryRank&) = delete;
  /// The thread reading ahead touches `own_`: it must end before the reader does.
  ~StringsOfEveryRank() {
    if (ahead_.valid()) ahead_.wait();
  }

  /// store::PromptStringSource: the next block of the next rank in turn whose part has rows left.
  std::optional<std::size_t> next(store::PromptStrings& out) {
    for (std::size_t tries = 0; tries < parts_.size(); ++tries) {
      const std::size_t rank = turn_;
      turn_ = (turn_ + 1) % parts_.size();
      auto& part = parts_[rank];
      if (part.stream == Stream::ended || part.next == part.end) continue;
      auto block = take(rank);
      if (block.error) std::rethrow_exception(block.error);
      if (block.first != part.next || block.rows() == 0 || block.rows() > part.end - part.next ||
          block.last != (block.first + block.rows() == part.end))
        throw InternalError(fmt::format(
            "creating the output file: rank {} sent {} rows from row {} where its rows {} to {} were due",
            rank, block.rows(), block.first, part.next, part.end));
      part.next += block.rows();
      // The strings stay in this block until the next call.
      current_ = std::move(block);
      for (auto* column : {&out.text, &out.id, &out.meta}) column->reserve(current_.rows());
      for (std::size_t k = 0; k < current_.rows(); ++k) {
        out.text.push_back(current_.c_str(k, spec::StringBlock::Column::text));
        out.id.push_back(current_.c_str(k, spec::StringBlock::Column::id));
        out.meta.push_back(current_.c_str(k, spec::StringBlock::Column::meta));
      }
      return current_.first;
    }
    return std::nullopt;
  }

  /// Ends the exchange, on success and failure alike: a rank not asked yet is told to send nothing,
  /// a rank that was asked is told it is done, and the blocks still coming from a rank that was
  /// asked are taken (and dropped), so that no rank is left in a send or a wait. Never throws: a
  /// failure here (bytes that are not a block, MPI) ends every rank.
  void finish() noexcept {
    try {
      if (ahead_.valid()) ahead_.wait();
      for (std::size_t rank = 1; rank < parts_.size(); ++rank) {
        auto& stream = parts_[rank].stream;
        const int to = static_cast<int>(rank);
        if (stream == Stream::waiting) {
          comm_.send(to, Tag::strings, kStop);
        } else if (stream == Stream::broken) {
          throw InternalError(fmt::format("rank {} sent bytes that are not prompt strings", rank));
        } else {
          comm_.send(to, Tag::strings, kEnd);
          while (stream == Stream::open)
            stream = spec::decode_string_block(comm_.receive(to, Tag::strings)).last ? Stream::ended
                                                                                     : Stream::open;
        }
        stream = Stream::ended;
      }
    } catch (const std::exception& e) {
      end_every_rank(comm_, e.what());
    }
  }

 private:
  enum class Stream { waiting, open, ended, broken };
  struct Part {
    std::size_t next = 0, end = 0;  ///< the next row due from the rank, and the end of its part
    Stream stream = Stream::waiting;
  };

  /// The next block of `rank`: rank 0's own read ahead, or the next one the rank sends (it is asked
  /// to send its part the first time).
  spec::StringBlock take(std::size_t rank) {
    auto& stream = parts_[rank].stream;
    spec::StringBlock block;
    if (rank == 0) {
      block = ahead_.get();
      if (!block.last && !block.error) ahead_ = read_on_thread(own_, block.first + block.rows());
    } else {
      if (stream == Stream::waiting) {
        comm_.send(static_cast<int>(rank), Tag::strings, kSend);
        stream = Stream::open;
      }
      stream = Stream::broken;  // until a block decodes
      block = spec::decode_string_block(comm_.receive(static_cast<int>(rank), Tag::strings));
    }
    stream = block.last || block.error ? Stream::ended : Stream::open;
    return block;
  }
  const Communicator& comm_;
  std::vector<Part> parts_;  ///< per rank
  std::size_t turn_ = 0;     ///< the rank whose block is due next
  std::optional<spec::StringBlockReader> own_;
  std::future<spec::StringBlock> ahead_;
  spec::StringBlock current_;  ///< the block whose strings the last call handed out
};

}  // namespace

std::filesystem::path create_with_every_rank(const Communicator& comm, const BatchTokenizer& prompts,
                                             unsigned threads, const std::filesystem::path& output,
                                             const std::function<store::FileLayout()>& layout_of,
                                             std::size_t block_rows, PartSent* sent) {
  if (comm.rank() != 0) {
    PartSent ignored;
    send_part(comm, prompts, threads, block_rows, sent != nullptr ? *sent : ignored);
    return {};
  }
  // First, so that whatever fails below (the layout too: it copies N-sized arrays), finish() tells
  // every rank to stop.
  StringsOfEveryRank strings(comm, prompts, threads, block_rows);
  std::filesystem::path temporary;
  try {
    if (!layout_of) throw InternalError("create_with_every_rank: rank 0 needs the file's layout");
    auto layout = layout_of();
    layout.prompt_strings = [&strings](store::PromptStrings& out) { return strings.next(out); };
    temporary = store::create_unpublished(output, layout);
  } catch (...) {
    strings.finish();
    throw;
  }
  strings.finish();
  return temporary;
}

}  // namespace ndif::run
