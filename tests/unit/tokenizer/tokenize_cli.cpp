// A test tool: `tokenize_cli TOKENIZER.json [--special] [--offsets] < strings.jsonl`, the same
// output as `ndif-sweep tokenize`, for the differential test and for benchmarks.
#include <iostream>
#include <string>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/tokenizer/tokenize_command.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: tokenize_cli TOKENIZER.json [--special] [--offsets] < strings.jsonl\n";
    return 2;
  }
  bool special = false;
  bool offsets = false;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--special") special = true;
    else if (flag == "--offsets") offsets = true;
    else {
      std::cerr << "tokenize_cli: unknown flag " << flag << "\n";
      return 2;
    }
  }
  std::ios::sync_with_stdio(false);
  try {
    return ndif::tokenizer::run_tokenize_command(argv[1], special, offsets, std::cin, std::cout);
  } catch (const ndif::Error& e) {
    std::cerr << "tokenize_cli: " << e.what() << "\n";
    return static_cast<int>(e.exit_code());
  }
}
