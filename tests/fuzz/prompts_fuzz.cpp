// libFuzzer target: a prompts file (JSON Lines) from untrusted bytes. Only InputError may escape.
// The whole-text parse, the indexed file read line by line (what a job does) and the strings the
// output file gets (spec::StringBlockReader, append_strings) must agree.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/spec/prompt_strings.hpp"
#include "ndif_sweep/spec/prompts.hpp"
#include "ndif_sweep/spec/prompts_file.hpp"

namespace {

using Column = ndif::spec::StringBlock::Column;

/// The bytes as a file, without touching the disk: a memfd, opened again through /proc.
struct MemoryFile {
  int fd = memfd_create("prompts.jsonl", MFD_CLOEXEC);
  ~MemoryFile() { close(fd); }
  [[nodiscard]] std::string path() const { return "/proc/self/fd/" + std::to_string(fd); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<ndif::spec::PositionSpec> defaults{ndif::spec::PositionSpec{}};
  std::vector<ndif::spec::PromptRecord> prompts;
  bool parsed = false;
  try {
    prompts = ndif::spec::parse_prompts(text, "prompts.jsonl", defaults);
    parsed = true;
    for (const auto& p : prompts)
      if (p.positions.empty() || p.line == 0) __builtin_trap();
  } catch (const ndif::InputError&) {
  }

  MemoryFile memory;
  if (memory.fd < 0 || write(memory.fd, data, size) != static_cast<ssize_t>(size)) return 0;
  try {
    const auto file = ndif::spec::PromptsFile::index(memory.path());
    if (parsed && file.rows() != prompts.size()) __builtin_trap();
    // Line by line, before anything below may stop at a refused line: append_strings (the SAX path,
    // or parse_prompt for what it does not take plainly) accepts what parse_prompt accepts, with the
    // same strings, and refuses what it refuses, with the same message.
    for (std::size_t row = 0; row < file.rows(); ++row) {
      std::optional<ndif::spec::PromptRecord> record;
      std::string refused, refused_too;
      try {
        record = ndif::spec::parse_prompt(file.line(row), row, "prompts.jsonl", defaults);
      } catch (const ndif::InputError& e) {
        refused = e.what();
      }
      ndif::spec::StringBlock strings;
      try {
        ndif::spec::append_strings(file.line(row), row, "prompts.jsonl", defaults, strings);
      } catch (const ndif::InputError& e) {
        refused_too = e.what();
      }
      if (refused != refused_too || record.has_value() != (strings.rows() == 1)) __builtin_trap();
      if (record &&
          (strings.view(0, Column::text) != record->text || strings.view(0, Column::id) != record->id ||
           strings.view(0, Column::meta) != record->meta_json))
        __builtin_trap();
    }
    const auto block = file.lines(0, file.rows());
    for (std::size_t row = 0; row < file.rows(); ++row) {
      if (block.line(row) != file.line(row)) __builtin_trap();
      const auto one = ndif::spec::parse_prompt(block.line(row), row, "prompts.jsonl", defaults);
      if (parsed && (one.text != prompts[row].text || one.id != prompts[row].id ||
                     one.meta_json != prompts[row].meta_json || one.line != prompts[row].line))
        __builtin_trap();
    }
    // The strings the output file gets, read as ranks read them (SAX path, blocks of 3 rows), are
    // the parse's; and a line the parse refuses is refused by them too.
    if (parsed) {
      ndif::spec::StringBlockReader reader(std::make_shared<const ndif::spec::PromptsFile>(file), defaults, 0,
                                           file.rows(), 1, 3);
      std::size_t row = 0;
      while (!reader.done()) {
        const auto strings = reader.next();
        if (strings.error) __builtin_trap();
        for (std::size_t k = 0; k < strings.rows(); ++k, ++row)
          if (strings.view(k, Column::text) != prompts[row].text ||
              strings.view(k, Column::id) != prompts[row].id ||
              strings.view(k, Column::meta) != prompts[row].meta_json)
            __builtin_trap();
      }
      if (row != prompts.size()) __builtin_trap();
    }
  } catch (const ndif::InputError&) {
    if (parsed) __builtin_trap();  // every line of a good file parses alone
  }
  return 0;
}
