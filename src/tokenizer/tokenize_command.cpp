#include "ndif_sweep/tokenizer/tokenize_command.hpp"

#include <istream>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/tokenizer/tokenizer.hpp"

namespace ndif::tokenizer {

int run_tokenize_command(const std::filesystem::path& tokenizer_path, bool special, bool offsets,
                         std::istream& in, std::ostream& out) {
  const Tokenizer tokenizer = Tokenizer::from_file(tokenizer_path);
  std::string line;
  std::string printed;
  for (std::size_t line_number = 1; std::getline(in, line); ++line_number) {
    if (line.empty()) continue;
    const std::string where = "stdin:" + std::to_string(line_number);
    nlohmann::json parsed;
    try {
      parsed = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      // parse_error for text that is not JSON, out_of_range for a number beyond double's range
      throw InputError(where + ": expected a JSON string, got text that is not JSON");
    }
    if (!parsed.is_string())
      throw InputError(where + ": expected a JSON string, got " + std::string(parsed.type_name()));
    Encoding encoding;
    try {
      encoding = tokenizer.encode(parsed.get_ref<const std::string&>(), special);
    } catch (const InputError& e) {
      throw InputError(where + ": " + e.what());
    }
    printed.clear();
    printed += offsets ? "{\"ids\":[" : "[";
    for (std::size_t i = 0; i < encoding.ids.size(); ++i) {
      if (i > 0) printed += ',';
      printed += std::to_string(encoding.ids[i]);
    }
    printed += ']';
    if (offsets) {
      printed += ",\"offsets\":[";
      for (std::size_t i = 0; i < encoding.offsets.size(); ++i) {
        if (i > 0) printed += ',';
        printed += '[' + std::to_string(encoding.offsets[i].first) + ',' +
                   std::to_string(encoding.offsets[i].second) + ']';
      }
      printed += "]}";
    }
    printed += '\n';
    out << printed;
  }
  out.flush();
  return 0;
}

}  // namespace ndif::tokenizer
