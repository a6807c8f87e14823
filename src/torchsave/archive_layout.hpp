#pragma once
/// \file
/// The torch.save archive layout, with the ZIP64 threshold exposed so that tests can check the
/// ZIP64 records (normally needed only above 4 GiB) on small inputs.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ndif_sweep/torchsave/value.hpp"

namespace ndif::torchsave::detail {

/// save() with ZIP64 records for every entry or offset at least `zip64_threshold` bytes large.
[[nodiscard]] std::vector<std::byte> save_archive(const Value& value, const std::string& archive,
                                                  std::uint64_t zip64_threshold);

}  // namespace ndif::torchsave::detail
