// libFuzzer target for what rank 0 reads from the other ranks while it creates the output file: the
// bytes of a block of prompt strings (spec::decode_string_block). Only InternalError may escape; a
// block that decodes has three NUL-ended strings a row inside its bytes, an error block holds no
// strings and is the last, and its bytes made again decode to the same block.
// Good seeds: blocks made by spec::encode_string_block (corpus/string_block_fuzz/).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/spec/prompt_strings.hpp"

using Column = ndif::spec::StringBlock::Column;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const auto block = ndif::spec::decode_string_block(bytes);
    // The header's row count (its second u64) is the block's.
    std::uint64_t rows = 0;
    std::memcpy(&rows, bytes.data() + 8, sizeof rows);
    if (block.starts.size() != 3 * block.rows() || (!block.error && block.rows() != rows)) __builtin_trap();
    if (block.error && (block.rows() != 0 || !block.last)) __builtin_trap();
    // Every string is NUL-ended inside the bytes, and reading each must stay inside them.
    std::size_t total = 0;
    for (std::size_t k = 0; k < block.rows(); ++k)
      for (auto column : {Column::text, Column::id, Column::meta}) {
        const auto s = block.view(k, column);
        if (s.data() + s.size() >= block.bytes.data() + block.bytes.size() || s.data()[s.size()] != '\0')
          __builtin_trap();
        total += s.size() + 1;
      }
    if (!block.error && total != block.bytes.size()) __builtin_trap();
    if (!block.error) {
      const auto again = ndif::spec::decode_string_block(ndif::spec::encode_string_block(block));
      if (again.first != block.first || again.last != block.last || again.bytes != block.bytes ||
          again.starts != block.starts)
        __builtin_trap();
    }
  } catch (const ndif::InternalError&) {
    // bytes that are no block
  }
  return 0;
}
