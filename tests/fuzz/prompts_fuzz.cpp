// libFuzzer target: a prompts file (JSON Lines) from untrusted bytes. Only InputError may escape.
// The whole-text parse and the indexed file read line by line (what a job does) must agree.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/spec/prompts.hpp"
#include "ndif_sweep/spec/prompts_file.hpp"

namespace {

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
    const auto block = file.lines(0, file.rows());
    for (std::size_t row = 0; row < file.rows(); ++row) {
      if (block.line(row) != file.line(row)) __builtin_trap();
      const auto one = ndif::spec::parse_prompt(block.line(row), row, "prompts.jsonl", defaults);
      if (parsed && (one.text != prompts[row].text || one.id != prompts[row].id ||
                     one.meta_json != prompts[row].meta_json || one.line != prompts[row].line))
        __builtin_trap();
    }
  } catch (const ndif::InputError&) {
    if (parsed) __builtin_trap();  // every line of a good file parses alone
  }
  return 0;
}
