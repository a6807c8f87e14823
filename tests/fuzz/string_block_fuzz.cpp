// libFuzzer target for what rank 0 reads from the other ranks while it creates the output file: the
// bytes of a block of prompt strings (spec::decode_string_block). Only InternalError may escape; a
// block that decodes has three columns of its row count, an error block holds no strings and is the
// last, and its bytes made again decode to the same block.
// Good seeds: blocks made by spec::encode_string_block (corpus/string_block_fuzz/).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/spec/prompt_strings.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const auto block = ndif::spec::decode_string_block(bytes);
    if (block.id.size() != block.rows() || block.meta.size() != block.rows()) __builtin_trap();
    if (block.error && (block.rows() != 0 || !block.last)) __builtin_trap();
    if (!block.error) {
      const auto again = ndif::spec::decode_string_block(ndif::spec::encode_string_block(block));
      if (again.first != block.first || again.last != block.last || again.text != block.text ||
          again.id != block.id || again.meta != block.meta)
        __builtin_trap();
    }
  } catch (const ndif::InternalError&) {
    // bytes that are no block
  }
  return 0;
}
