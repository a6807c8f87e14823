#include "ndif_sweep/remote/result.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"

namespace ndif::remote {
namespace {

// Room for the ZIP directory, the pickle and the alignment padding of a torch.save file.
constexpr std::size_t kContainerSlack = std::size_t{1} << 20;

// clang with libstdc++ fails to instantiate std::pair<Value, Value> (a Dict item) before Value's
// destructor, because Value holds Dicts; a Value made here instantiates the destructor first.
[[maybe_unused]] torchsave::Value none_value() { return torchsave::Value{}; }

const char* kind_of(const torchsave::Value& value) {
  static constexpr const char* kNames[] = {"None",   "bool", "int",   "float", "str",
                                           "tensor", "list", "tuple", "dict"};
  return kNames[value.v.index()];
}

const torchsave::Value* find_key(const torchsave::Dict& dict, const std::string& key) {
  for (const auto& item : dict.items) {
    if (const auto* s = std::get_if<std::string>(&item.first.v); s != nullptr && *s == key)
      return &item.second;
  }
  return nullptr;
}

const torchsave::Value* find_key(const torchsave::Dict& dict, std::int64_t key) {
  for (const auto& item : dict.items) {
    if (const auto* i = std::get_if<std::int64_t>(&item.first.v); i != nullptr && *i == key)
      return &item.second;
  }
  return nullptr;
}

// G4: the saved locals of the trace, keyed by variable name; the one asked for must be there.
const torchsave::Tensor& named_tensor(const torchsave::Value& root, const std::string& name) {
  const auto* dict = std::get_if<torchsave::Dict>(&root.v);
  if (dict == nullptr)
    throw DecodeError(
        fmt::format("result file holds a {}, expected a dict of saved variables", kind_of(root)));
  const torchsave::Value* saved = find_key(*dict, name);
  if (saved == nullptr) {
    std::vector<std::string> names;
    for (const auto& item : dict->items) {
      const auto* key = std::get_if<std::string>(&item.first.v);
      names.push_back(key != nullptr ? "\"" + *key + "\"" : kind_of(item.first));
    }
    throw DecodeError(
        fmt::format("result file has no saved variable \"{}\" (it holds {})", name,
                    names.empty() ? std::string("nothing") : fmt::format("{}", fmt::join(names, ", "))));
  }
  const auto* tensor = std::get_if<torchsave::Tensor>(&saved->v);
  if (tensor == nullptr)
    throw DecodeError(
        fmt::format("result variable \"{}\" is a {}, expected a tensor", name, kind_of(*saved)));
  return *tensor;
}

const torchsave::Tensor& saved_tensor(const torchsave::Value& root, std::int64_t saved_node) {
  const auto* dict = std::get_if<torchsave::Dict>(&root.v);
  if (dict == nullptr)
    throw DecodeError(fmt::format("result file holds a {}, expected a dict", kind_of(root)));
  const torchsave::Value* values = find_key(*dict, "result");
  if (values == nullptr) throw DecodeError("result file's dict has no \"result\" key");
  const auto* results = std::get_if<torchsave::Dict>(&values->v);
  if (results == nullptr)
    throw DecodeError(fmt::format("result file's \"result\" is a {}, expected a dict", kind_of(*values)));

  const torchsave::Value* saved = find_key(*results, saved_node);
  if (saved == nullptr) {
    // G3 servers key saved values by variable name; with one save per batch there is one tensor.
    const torchsave::Value* only = nullptr;
    int tensors = 0;
    for (const auto& item : results->items) {
      if (std::holds_alternative<torchsave::Tensor>(item.second.v)) {
        ++tensors;
        only = &item.second;
      }
    }
    if (tensors != 1) {
      throw DecodeError(fmt::format(
          "result file has no value for node {} and {} tensors instead of exactly one", saved_node, tensors));
    }
    saved = only;
  }
  const auto* tensor = std::get_if<torchsave::Tensor>(&saved->v);
  if (tensor == nullptr) {
    throw DecodeError(
        fmt::format("result for node {} is a {}, expected a tensor", saved_node, kind_of(*saved)));
  }
  return *tensor;
}

/// The top bit of each 16-bit lane of `word` (`mask` repeated in each lane) whose exponent bits
/// are all set: the NaN and infinite values among four float16 or bfloat16 elements, branch-free.
inline std::uint64_t nonfinite_lanes16(std::uint64_t word, std::uint64_t mask) noexcept {
  constexpr std::uint64_t kLow15 = 0x7FFF7FFF7FFF7FFFULL;
  const std::uint64_t t = (word & mask) ^ mask;  // a lane is zero iff its exponent is all ones
  return ~(((t & kLow15) + kLow15) | t | kLow15);
}

/// The sum of the four 16-bit lanes of `lanes`.
inline std::int64_t lane_sum16(std::uint64_t lanes) noexcept {
  return static_cast<std::int64_t>((lanes & 0xFFFF) + ((lanes >> 16) & 0xFFFF) + ((lanes >> 32) & 0xFFFF) +
                                   (lanes >> 48));
}

std::int64_t count_nonfinite(std::span<const std::byte> bytes, DType dtype) {
  std::int64_t count = 0;
  if (dtype == DType::float32) {
    for (std::size_t i = 0; i + 4 <= bytes.size(); i += 4) {
      std::uint32_t bits = 0;
      std::memcpy(&bits, bytes.data() + i, 4);
      count += (bits & 0x7F800000U) == 0x7F800000U ? 1 : 0;
    }
    return count;
  }
  const std::uint16_t mask = dtype == DType::float16 ? 0x7C00 : 0x7F80;
  const std::uint64_t mask4 = 0x0001000100010001ULL * mask;
  std::size_t i = 0;
  // Per-lane counters of 16 bits, emptied before they can overflow.
  constexpr std::size_t kWordsPerFlush = 0xFFFF;
  while (i + 8 <= bytes.size()) {
    std::uint64_t lanes = 0;
    for (std::size_t w = 0; w < kWordsPerFlush && i + 8 <= bytes.size(); ++w, i += 8) {
      std::uint64_t word = 0;
      std::memcpy(&word, bytes.data() + i, 8);
      lanes += nonfinite_lanes16(word, mask4) >> 15;
    }
    count += lane_sum16(lanes);
  }
  for (; i + 2 <= bytes.size(); i += 2) {
    std::uint16_t bits = 0;
    std::memcpy(&bits, bytes.data() + i, 2);
    count += (bits & mask) == mask ? 1 : 0;
  }
  return count;
}

}  // namespace

std::size_t max_result_bytes(const ExpectedResult& expected) noexcept {
  return static_cast<std::size_t>(expected.data_bytes()) + kContainerSlack;
}

namespace {

/// The bytes of one probe's rows in a result for `expected`.
std::size_t probe_bytes(const ExpectedResult& expected, std::int64_t layers) {
  return static_cast<std::size_t>(expected.batch * layers * expected.positions * expected.hidden) *
         element_size(expected.dtype);
}

}  // namespace

ResultRoom result_room(std::span<const std::byte> bytes, const ExpectedResult& expected) {
  ResultRoom room;
  room.inflated = torchsave::zstd_room(bytes, max_result_bytes(expected));
  if (expected.probe_layers.size() > 1) {
    for (const auto layers : expected.probe_layers)
      room.probes.emplace_back().reserve(probe_bytes(expected, layers));
  }
  return room;
}

DecodedResult decode_result(std::vector<std::byte> bytes, const ExpectedResult& expected, ResultRoom room) {
  const auto limit = max_result_bytes(expected);
  // The tensor is read where it lies, in the downloaded file or in its decompressed form, which the
  // storage then owns: copies of a whole batch are what limits a rank's throughput
  // (bench/write_bench.cpp).
  const auto root = [&] {
    if (torchsave::is_zstd(bytes)) {
      auto inflated = std::make_shared<const ByteBuffer>(
          torchsave::decompress_zstd(bytes, limit, std::move(room.inflated)));
      // Freed before the tensor is read: a batch's compressed and decompressed forms are held
      // together only while zstd runs.
      std::vector<std::byte>().swap(bytes);
      return torchsave::load_in_place(*inflated, inflated);
    }
    auto file = std::make_shared<const std::vector<std::byte>>(std::move(bytes));
    return torchsave::load_in_place(*file, file);
  }();
  const auto& tensor = expected.saved_name.empty() ? saved_tensor(root, expected.saved_node)
                                                   : named_tensor(root, expected.saved_name);

  const auto want_dtype = expected.dtype;
  if (tensor.dtype() != want_dtype) {
    throw DecodeError(fmt::format("result tensor has dtype {}, expected {} as requested",
                                  dtype_name(tensor.dtype()), dtype_name(want_dtype)));
  }
  const std::vector<std::int64_t> want_shape{expected.batch, expected.total_layers(), expected.positions,
                                             expected.hidden};
  if (tensor.shape != want_shape) {
    throw DecodeError(
        fmt::format("result tensor has shape ({}), expected ({}) = (prompts, layers, positions, hidden)",
                    fmt::join(tensor.shape, ", "), fmt::join(want_shape, ", ")));
  }

  // The rows where they lie in the decoded storage when it is row-major (torch.save of a fresh
  // tensor), else one contiguous copy.
  DecodedResult out;
  std::span<const std::byte> data;
  if (const auto view = tensor.contiguous_view()) {
    data = *view;
    out.storage = tensor.storage;
  } else {
    data = out.copies.emplace_back(tensor.contiguous_bytes());
  }
  const auto element = element_size(want_dtype);
  const auto row =
      static_cast<std::size_t>(expected.positions * expected.hidden) * element;  // one layer of one prompt
  const auto per_prompt = row * static_cast<std::size_t>(expected.total_layers());

  out.nonfinite = count_nonfinite(data, want_dtype);
  auto shape_of = [&](std::int64_t layers) {
    return std::vector<std::int64_t>{expected.batch, layers, expected.positions, expected.hidden};
  };
  if (expected.probe_layers.size() == 1) {
    out.probes.push_back(ProbeBlock{shape_of(expected.probe_layers[0]), data});
    return out;
  }
  // Several probes: each one's rows copied out of the interleaved layers, into the room made for
  // them where it is there (within its capacity, resize allocates nothing and writes no byte).
  room.probes.resize(expected.probe_layers.size());
  std::size_t layer_offset = 0;
  for (std::size_t p = 0; p < expected.probe_layers.size(); ++p) {
    const auto layers = expected.probe_layers[p];
    const auto chunk = row * static_cast<std::size_t>(layers);
    auto& bytes_of_probe = out.probe_rows.emplace_back(std::move(room.probes[p]));
    bytes_of_probe.resize(probe_bytes(expected, layers));
    for (std::size_t b = 0; b < static_cast<std::size_t>(expected.batch); ++b)
      std::memcpy(bytes_of_probe.data() + b * chunk, data.data() + b * per_prompt + layer_offset * row,
                  chunk);
    layer_offset += static_cast<std::size_t>(layers);
  }
  // The spans are taken once every buffer is in place: probe_rows does not move them again.
  for (std::size_t p = 0; p < expected.probe_layers.size(); ++p)
    out.probes.push_back(ProbeBlock{shape_of(expected.probe_layers[p]), out.probe_rows[p]});
  out.copies.clear();
  out.storage.reset();
  return out;
}

}  // namespace ndif::remote
