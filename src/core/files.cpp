#include "ndif_sweep/core/files.hpp"

#include <fstream>
#include <sstream>

#include "ndif_sweep/core/error.hpp"

namespace ndif {

std::string read_file(const std::filesystem::path& path, const std::string& what) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw InputError(path.string() + ": the " + what + " is a directory; give the path of a file");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw InputError(path.string() + ": cannot open the " + what + " (does it exist and is it readable?)");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw InputError(path.string() + ": read error in the " + what);
  return std::move(ss).str();
}

}  // namespace ndif
