#pragma once
/// \file
/// Small file helpers shared by modules that read user files.

#include <filesystem>
#include <string>

namespace ndif {

/// Reads a whole file. Throws InputError naming `what` and the path if it cannot be read.
[[nodiscard]] std::string read_file(const std::filesystem::path& path, const std::string& what);

}  // namespace ndif
