// Split benchmark: the pre-tokenizer patterns of the tokenizer families, each through its scanner
// and through PCRE2 (JIT) with the same Unicode 16.0 classes, on the same corpus.
//   usage: split_bench CORPUS.jsonl [--repeat N]
// CORPUS.jsonl holds one JSON string per line (tests/tools/gen_corpus.py writes one). Prints a
// Markdown table: for each pattern the pieces found and MB/s of UTF-8 split by each, the best of
// N passes (default 5); the two must find the same pieces, or the program fails.
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "regex.hpp"
#include "split_scanner.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using ndif::tokenizer::detail::Regex;

// Best MB/s of `repeat` passes over `texts`, and the pieces of one pass.
std::pair<double, std::size_t> measure(const Regex& pattern, const std::vector<std::string>& texts,
                                       std::size_t bytes, int repeat) {
  double best = 0;
  std::size_t pieces = 0;
  for (int pass = 0; pass < repeat; ++pass) {
    pieces = 0;
    const auto start = Clock::now();
    for (const auto& text : texts) pieces += pattern.find_all(text).size();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::max(best, static_cast<double>(bytes) / seconds / 1e6);
  }
  return {best, pieces};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: split_bench CORPUS.jsonl [--repeat N]\n";
    return 2;
  }
  const int repeat = argc >= 4 && std::string(argv[2]) == "--repeat" ? std::atoi(argv[3]) : 5;
  std::ifstream in(argv[1]);
  if (!in) {
    std::cerr << argv[1] << ": cannot open the corpus\n";
    return 2;
  }
  std::vector<std::string> texts;
  std::size_t bytes = 0;
  for (std::string line; std::getline(in, line);) {
    texts.push_back(nlohmann::json::parse(line).get<std::string>());
    bytes += texts.back().size();
  }
  std::cout << texts.size() << " strings, " << bytes << " bytes of UTF-8; best of " << repeat
            << " passes\n\n";
  std::cout << "| pattern | pieces | scanner MB/s | PCRE2 JIT MB/s | scanner / PCRE2 "
               "|\n|---|---:|---:|---:|---:|\n";
  for (const auto& known : ndif::tokenizer::detail::known_split_patterns()) {
    const std::string name(known.name);
    const std::string text(known.pattern);
    const Regex scanned(text, name);
    const Regex engine = Regex::without_scanner(text, name);
    const auto [scanner_rate, scanner_pieces] = measure(scanned, texts, bytes, repeat);
    const auto [engine_rate, engine_pieces] = measure(engine, texts, bytes, repeat);
    if (scanner_pieces != engine_pieces) {
      std::cerr << name << ": the scanner found " << scanner_pieces << " pieces, PCRE2 " << engine_pieces
                << '\n';
      return 1;
    }
    std::printf("| %s | %zu | %.1f | %.1f | %.2f |\n", name.c_str(), scanner_pieces, scanner_rate,
                engine_rate, scanner_rate / engine_rate);
  }
  return 0;
}
