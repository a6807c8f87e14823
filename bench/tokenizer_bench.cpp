// Tokenizer benchmark: load time and encoding throughput of tokenizer.json files on a corpus.
//   usage: tokenizer_bench CORPUS.jsonl [--repeat N] [--threads N] TOKENIZER.json...
// CORPUS.jsonl holds one JSON string per line (tests/tools/gen_corpus.py writes one). For each
// tokenizer it prints one JSON line: the load time, the tokens of one pass over the corpus (with
// special tokens), tokens per second of the first pass, and tokens per second on one thread
// and on all threads, each the best of N later passes. The threads split the corpus into contiguous slices
// and share one Tokenizer, the way a sweep tokenizes its prompts. bench/run_tokenizer_bench.sh puts this
// beside the reference.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/tokenizer/tokenizer.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using ndif::tokenizer::Tokenizer;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<std::string> read_corpus(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ndif::InputError(path + ": cannot open the corpus");
  std::vector<std::string> texts;
  std::string line;
  while (std::getline(in, line)) texts.push_back(nlohmann::json::parse(line).get<std::string>());
  return texts;
}

// Tokens of encoding texts[first, last).
std::size_t encode_slice(const Tokenizer& tokenizer, const std::vector<std::string>& texts, std::size_t first,
                         std::size_t last) {
  std::size_t tokens = 0;
  for (std::size_t i = first; i < last; ++i) tokens += tokenizer.encode(texts[i], true).ids.size();
  return tokens;
}

// Best wall time of `repeat` passes over the corpus with `threads` threads.
double best_pass(const Tokenizer& tokenizer, const std::vector<std::string>& texts, unsigned threads,
                 int repeat) {
  double best = 1e300;
  for (int r = 0; r < repeat; ++r) {
    const auto start = Clock::now();
    std::vector<std::thread> workers;
    for (unsigned t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        static_cast<void>(
            encode_slice(tokenizer, texts, texts.size() * t / threads, texts.size() * (t + 1) / threads));
      });
    }
    for (auto& worker : workers) worker.join();
    best = std::min(best, seconds_since(start));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> files;
  int repeat = 3;
  unsigned threads = std::max(1U, std::thread::hardware_concurrency());
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--repeat" && i + 1 < argc)
      repeat = std::max(1, std::atoi(argv[++i]));
    else if (arg == "--threads" && i + 1 < argc)
      threads = static_cast<unsigned>(std::max(1, std::atoi(argv[++i])));
    else
      files.push_back(arg);
  }
  if (argc < 3 || files.empty()) {
    std::cerr << "usage: tokenizer_bench CORPUS.jsonl [--repeat N] [--threads N] TOKENIZER.json...\n";
    return 2;
  }
  try {
    const auto texts = read_corpus(argv[1]);
    for (const auto& file : files) {
      const auto load_start = Clock::now();
      const auto tokenizer = Tokenizer::from_file(file);
      const double load_s = seconds_since(load_start);
      // The first pass meets every word for the first time (a cold word cache); later passes show
      // the steady state of a sweep, whose prompts share most of their words.
      const auto first_start = Clock::now();
      const std::size_t tokens = encode_slice(tokenizer, texts, 0, texts.size());
      const double first_s = seconds_since(first_start);
      const double single_s = best_pass(tokenizer, texts, 1, repeat);
      const double multi_s = best_pass(tokenizer, texts, threads, repeat);
      std::cout << nlohmann::json{{"file", file},
                                  {"load_s", load_s},
                                  {"strings", texts.size()},
                                  {"tokens", tokens},
                                  {"first_pass_tokens_per_s", static_cast<double>(tokens) / first_s},
                                  {"single_thread_tokens_per_s", static_cast<double>(tokens) / single_s},
                                  {"threads", threads},
                                  {"all_threads_tokens_per_s", static_cast<double>(tokens) / multi_s}}
                << std::endl;
    }
  } catch (const ndif::Error& e) {
    std::cerr << "tokenizer_bench: " << e.what() << "\n";
    return static_cast<int>(e.exit_code());
  }
  return 0;
}
