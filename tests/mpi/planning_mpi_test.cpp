// Planning with every rank over MPI: each rank measures its part of a prompts file it opens through
// rank 0's index, and rank 0's merge equals one process's scan of the whole file, bit for bit; a
// bad line in another rank's part, and an id repeated across two ranks' parts, are reported on
// rank 0 as one process reports them; parts arrive in rank order. Exits 0 only when every rank's
// checks passed.

#include <mpi.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "mpi_checks.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"
#include "ndif_sweep/plan/batch_plan.hpp"
#include "ndif_sweep/run/communicator.hpp"
#include "ndif_sweep/run/planning.hpp"

namespace {

using namespace ndif;
using namespace ndif::run;
namespace fs = std::filesystem;

ndif::mpitest::MpiChecks checks;

void expect(bool ok, const std::string& what) { checks.expect(ok, what); }

std::vector<spec::PositionSpec> positions() {
  spec::PositionSpec first, last;
  first.index = 0;
  last.index = -1;
  return {first, last};
}

const tokenizer::Tokenizer& bytes_tokenizer() {
  static const auto tokenizer = tokenizer::Tokenizer::from_json(
      read_file(fs::path(NDIF_SOURCE_DIR) / "tests/data/tokenizers/bytes.json", "tokenizer file"),
      "bytes.json");
  return tokenizer;
}

/// 997 prompts of 1 to 40 characters (a prime count, so that no two ranks' parts are alike).
std::vector<std::string> lines() {
  std::vector<std::string> out;
  for (int k = 0; k < 997; ++k)
    out.push_back(
        nlohmann::json{{"prompt", std::string(static_cast<std::size_t>(1 + (k * 7) % 40), 'a' + k % 26)},
                       {"id", "p" + std::to_string(k)}}
            .dump());
  return out;
}

/// Rank 0 writes `text` to a file of the test's directory and indexes it; every other rank opens it
/// through rank 0's index, as run_sweep does.
BatchTokenizer open_everywhere(const Communicator& comm, const fs::path& path,
                               const std::vector<std::string>& text, const fs::path& on_last_rank = {}) {
  std::shared_ptr<const spec::PromptsFile> file;
  if (comm.rank() == 0) {
    std::ofstream out(path, std::ios::binary);
    for (const auto& line : text) out << line << '\n';
    out.close();
    file = std::make_shared<const spec::PromptsFile>(spec::PromptsFile::index(path));
  }
  const auto index = comm.broadcast(comm.rank() == 0 ? file->index_bytes() : std::string());
  // The last rank may open another file, as a node with another copy would.
  const bool other = !on_last_rank.empty() && comm.rank() == comm.size() - 1 && comm.rank() != 0;
  if (comm.rank() != 0)
    file = std::make_shared<const spec::PromptsFile>(
        spec::PromptsFile::from_index(other ? on_last_rank : path, index));
  return BatchTokenizer{file, std::shared_ptr<const tokenizer::Tokenizer>(&bytes_tokenizer(), [](auto*) {}),
                        positions(), true, 2};
}

/// The error rank 0's merge throws, or "" when it throws none (every rank calls this).
std::string merged_error(const Communicator& comm, const BatchTokenizer& prompts) {
  auto measured = measure_prompts_in_parts(comm, prompts, core_share(comm));
  expect(measured.has_value() == (comm.rank() == 0), "only rank 0 holds the merge");
  if (!measured) return "";
  try {
    (void)std::move(*measured).shapes(prompts);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

void run_all(const Communicator& comm, const fs::path& dir) {
  auto text = lines();
  // The merge of every rank's part is one process's scan.
  {
    const auto prompts = open_everywhere(comm, dir / "good.jsonl", text);
    auto measured = measure_prompts_in_parts(comm, prompts, core_share(comm));
    if (comm.rank() == 0) {
      const auto shapes = std::move(*measured).shapes(prompts);
      const auto one = plan::scan_prompts(*prompts.prompts_file, positions(), bytes_tokenizer(), true, 1);
      expect(shapes.n_tokens == one.n_tokens, "lengths equal one process's scan");
      expect(shapes.positions == one.positions, "positions equal one process's scan");
      expect(shapes.max_token_id == one.max_token_id, "the largest token id is one process's");
      // bytes.json: one token a byte plus BOS, so line k has 1 + (1 + 7k mod 40) tokens.
      bool lengths = shapes.n_tokens.size() == 997;
      for (std::size_t k = 0; lengths && k < 997; ++k)
        lengths = shapes.n_tokens[k] == static_cast<std::int32_t>(2 + (k * 7) % 40);
      expect(lengths, "every length is the prompt's bytes plus the BOS token");
    }
  }
  // A bad line in the last rank's part; before it, a line that repeats the id of a line in rank
  // 0's part: the repeat comes first in the file, so it is the error.
  {
    text[980] = "{\"prompt\": ";
    text[900] = nlohmann::json{{"prompt", "bb"}, {"id", "p3"}}.dump();
    const auto prompts = open_everywhere(comm, dir / "bad.jsonl", text);
    const auto error = merged_error(comm, prompts);
    if (comm.rank() == 0)
      expect(error.find("bad.jsonl:901: id \"p3\" is already the id of line 4") != std::string::npos,
             "the repeated id across parts is reported: " + error);
    text[900] = lines()[900];
    const auto again = open_everywhere(comm, dir / "bad2.jsonl", text);
    const auto second = merged_error(comm, again);
    if (comm.rank() == 0)
      expect(second.find("bad2.jsonl:981: not valid JSON") != std::string::npos,
             "the bad line of the last part is reported: " + second);
  }
  // The last rank's node sees another file of the same size (one line changed): its part cannot be
  // read, and rank 0 reports that line instead of waiting for the part forever.
  {
    auto changed = lines();
    changed[990].replace(changed[990].find("\"p990\""), 6, "\"q990\"");
    const auto path = dir / "other_node.jsonl";
    const auto last = comm.size() - 1;
    if (comm.rank() == last && last != 0) {
      std::ofstream out(dir / "other_node_copy.jsonl", std::ios::binary);
      for (const auto& line : changed) out << line << '\n';
    }
    comm.barrier();
    const auto prompts = open_everywhere(comm, path, lines(), dir / "other_node_copy.jsonl");
    const auto error = merged_error(comm, prompts);
    if (comm.rank() == 0 && last != 0)
      expect(error.find("other_node_copy.jsonl:991: the line changed since the job read the prompts file") !=
                 std::string::npos,
             "a part that cannot be read is reported: " + error);
  }
  // Parts arrive in rank order, whatever their sizes.
  {
    std::vector<int> order;
    comm.gather_to_root(std::string(static_cast<std::size_t>(1000 * (comm.size() - comm.rank())), 'x') +
                            std::to_string(comm.rank()),
                        [&](int rank, std::string&& bytes) {
                          expect(bytes.size() == static_cast<std::size_t>(1000 * (comm.size() - rank)) +
                                                     std::to_string(rank).size(),
                                 "a part arrives whole");
                          order.push_back(rank);
                        });
    if (comm.rank() == 0) {
      std::vector<int> expected;
      for (int r = 1; r < comm.size(); ++r) expected.push_back(r);
      expect(order == expected, "parts arrive in rank order");
    }
  }
  const auto threads = core_share(comm);
  expect(threads >= 1 && threads <= std::max(1U, std::thread::hardware_concurrency()),
         "a rank plans on at least one thread and no more than the node's cores");
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  checks.start();
  const Communicator comm;
  const auto dir =
      fs::temp_directory_path() /
      ("ndif_planning_mpi_" + comm.broadcast(comm.rank() == 0 ? std::to_string(::getpid()) : ""));
  if (comm.rank() == 0) fs::create_directories(dir);
  comm.barrier();
  try {
    run_all(comm, dir);
  } catch (const std::exception& e) {
    expect(false, std::string("threw: ") + e.what());
  }
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(dir);
  return checks.finish();
}
