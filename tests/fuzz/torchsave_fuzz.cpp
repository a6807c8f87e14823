// libFuzzer target for the torch.save reader and the zstd unwrapper, both of which take bytes
// straight from the network. Only DecodeError may escape; a crash, a sanitizer report or any
// other exception is a finding. Every decoded tensor is also read out in full, so a view that
// passed the bounds checks but still reaches outside its storage shows up under ASan.
// The input is also run as a bare data.pkl (beside small storages "0" and "1"), because inside a
// ZIP the CRC-32 would stop nearly every mutation before it reaches the pickle VM.
// A good seed corpus is tests/data/torchsave/*.pt plus their data.pkl entries.
// Build: clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc/torchsave
//        src/torchsave/*.cpp tests/fuzz/torchsave_fuzz.cpp -lfmt -lz -lzstd -o torchsave_fuzz
#include <cstddef>
#include <cstdint>
#include <span>
#include <variant>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"
#include "zip_archive.hpp"

namespace {

// clang with libstdc++ cannot instantiate std::pair<Value, Value> (a Dict item) until Value's
// implicit default constructor is defined; odr-using it here, first, defines it.
[[maybe_unused]] ndif::torchsave::Value complete_value() { return {}; }

void touch(const ndif::torchsave::Value& value) {
  using namespace ndif::torchsave;
  if (const auto* t = std::get_if<Tensor>(&value.v)) {
    if (t->contiguous_bytes().size() != static_cast<std::size_t>(t->numel()) * element_size(t->dtype()))
      __builtin_trap();
  } else if (const auto* list = std::get_if<List>(&value.v)) {
    for (const auto& v : *list) touch(v);
  } else if (const auto* tuple = std::get_if<Tuple>(&value.v)) {
    for (const auto& v : tuple->items) touch(v);
  } else if (const auto* dict = std::get_if<Dict>(&value.v)) {
    for (const auto& item : dict->items) {
      touch(item.first);
      touch(item.second);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  try {
    touch(ndif::torchsave::load(input));
  } catch (const ndif::DecodeError&) {
    // malformed or unsupported input
  }
  try {
    const auto unpacked = ndif::torchsave::maybe_decompress_zstd({input.begin(), input.end()}, 1 << 20);
    if (unpacked.size() > (1u << 20) && unpacked.size() != size) __builtin_trap();
    touch(ndif::torchsave::load(unpacked));
  } catch (const ndif::DecodeError&) {
    // damaged frame, or a frame that does not hold a torch.save file
  }
  try {
    const std::vector<std::byte> storage(64, std::byte{0x3C});
    ndif::torchsave::detail::ZipBuffer zip;
    zip.add("archive/data.pkl", input);
    zip.add("archive/data/0", storage);
    zip.add("archive/data/1", std::span(storage).first(6));
    touch(ndif::torchsave::load(std::move(zip).finish()));
  } catch (const ndif::DecodeError&) {
    // a pickle outside the supported subset
  }
  return 0;
}
