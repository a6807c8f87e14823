#pragma once
/// \file
/// The values a torch.save file holds, as far as ndif-sweep reads and writes them: tensors (with
/// shared storages, offsets and strides), None, bools, ints, floats, strings, lists, tuples, dicts.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "ndif_sweep/core/dtype.hpp"

namespace ndif::torchsave {

/// Raw little-endian bytes of one storage; several tensors may view the same storage. A storage
/// either owns its bytes or, read by load_in_place(), views them where they lie in a loaded file
/// and shares that file's owner (a batch's result is then never copied out of its archive).
struct Storage {
  DType dtype = DType::float32;
  std::vector<std::byte> bytes;       ///< the elements, when the storage owns them
  std::span<const std::byte> view;    ///< the elements in a loaded file, when `owner` is set
  std::shared_ptr<const void> owner;  ///< keeps the file that `view` points into alive

  /// The elements, wherever they are.
  [[nodiscard]] std::span<const std::byte> data() const noexcept {
    return owner ? view : std::span<const std::byte>(bytes);
  }
};

/// A strided view into a storage, as `torch._utils._rebuild_tensor_v2` builds it.
struct Tensor {
  std::shared_ptr<const Storage> storage;
  std::int64_t offset = 0;  ///< in elements
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> stride;  ///< in elements

  [[nodiscard]] DType dtype() const noexcept { return storage->dtype; }
  [[nodiscard]] std::int64_t numel() const noexcept;
  /// The elements in row-major order, as one contiguous little-endian buffer.
  [[nodiscard]] std::vector<std::byte> contiguous_bytes() const;
  /// The same bytes without a copy, when the view is already row-major contiguous in its storage
  /// (what torch.save writes for a fresh tensor); nothing otherwise.
  [[nodiscard]] std::optional<std::span<const std::byte>> contiguous_view() const;
  /// A contiguous tensor owning a fresh storage with `bytes` (row-major) of `dtype` and `shape`.
  [[nodiscard]] static Tensor from_bytes(DType dtype, std::vector<std::int64_t> shape,
                                         std::vector<std::byte> bytes);
};

struct Value;
using List = std::vector<Value>;
/// A tuple is kept apart from a list because pickle distinguishes them.
struct Tuple {
  std::vector<Value> items;
};
/// Insertion-ordered, as Python dicts are.
struct Dict {
  std::vector<std::pair<Value, Value>> items;
};
struct None {};

/// One unpickled value.
struct Value {
  std::variant<None, bool, std::int64_t, double, std::string, Tensor, List, Tuple, Dict> v;
};

}  // namespace ndif::torchsave
