// Planning with every rank over MPI: each rank measures its part of a prompts file it opens through
// rank 0's index, and rank 0's merge equals one process's scan of the whole file, bit for bit; a
// bad line in another rank's part, and an id repeated across two ranks' parts, are reported on
// rank 0 as one process reports them; parts arrive in rank order. Exits 0 only when every rank's
// checks passed.

#include <mpi.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "mpi_checks.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"
#include "ndif_sweep/plan/batch_plan.hpp"
#include "ndif_sweep/run/communicator.hpp"
#include "ndif_sweep/run/file_creation.hpp"
#include "ndif_sweep/run/planning.hpp"
#include "ndif_sweep/store/parallel_output.hpp"
#include "store_fixture.hpp"

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
  expect(measured.merged.has_value() == (comm.rank() == 0), "only rank 0 holds the merge");
  if (!measured.merged) return "";
  try {
    (void)std::move(*measured.merged).shapes(prompts);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

/// The positions of every row, as one process measures them.
std::vector<std::int32_t> all_positions(const BatchTokenizer& prompts) {
  return plan::scan_part(*prompts.prompts_file, positions(), bytes_tokenizer(), true, 2, 0,
                         prompts.prompts_file->rows(), 1)
      .positions;
}

/// Rank 0's layout of an output file for `prompts`, measured by every rank; P = 2 positions left to
/// the ranks.
store::FileLayout layout_of(const plan::PromptShapes& shapes) {
  store::FileLayout layout;
  layout.job_json = "{}";
  layout.job_hash = "h";
  layout.model = "m";
  layout.model_key = "k";
  layout.tokenizer_sha256 = std::string(64, '0');
  layout.tool_version = "t";
  layout.n_tokens = shapes.n_tokens;
  layout.positions_from_ranks = true;
  layout.positions_per_row = 2;
  const auto plan = plan::make_batch_plan(shapes.n_tokens, spec::BatchOptions{},
                                          plan::RowShape{.total_layers = 1, .positions = 2, .hidden = 4});
  layout.batch_of_row = plan.batch_of_row;
  layout.order = plan.order;
  layout.batch_start = plan.start;
  layout.batch_count = plan.count;
  layout.probes = {{"resid", "model.layers.{layer}", 0, {0}, "0:1"}};
  layout.hidden = 4;
  return layout;
}

/// Steps 1 to 3 of file_creation.hpp as run_sweep takes them; "" when the file was published, else
/// the error rank 0 met (every rank returns).
std::string create_file(
    const Communicator& comm, const BatchTokenizer& prompts, const fs::path& output, std::size_t block_rows,
    const std::function<store::FileLayout(const plan::PromptShapes&)>& make_layout = layout_of,
    PartSent* sent = nullptr) {
  auto measured = measure_prompts_in_parts(comm, prompts, core_share(comm));
  std::optional<plan::PromptShapes> shapes;
  if (comm.rank() == 0) shapes = std::move(*measured.merged).shapes(prompts);
  std::string error;
  fs::path temporary;
  try {
    temporary = create_with_every_rank(
        comm, prompts, core_share(comm), output, [&] { return make_layout(*shapes); }, block_rows, sent);
  } catch (const Error& e) {
    error = e.what();
  }
  expect(comm.rank() == 0 || (error.empty() && temporary.empty()), "only rank 0 fails or holds the file");
  if (comm.broadcast(error) != "") return error;
  temporary = comm.broadcast(temporary.string());
  store::write_positions(temporary, comm.handle(), measured.mine.first, measured.mine.positions);
  if (comm.rank() == 0) store::publish(temporary, output);
  comm.barrier();
  return "";
}

void create_with_every_rank_checks(const Communicator& comm, const fs::path& dir) {
  using store::testing::read_numbers;
  using store::testing::read_strings_raw;
  // Every row's strings and positions, read by the rank that measured it: one process's.
  const auto text = lines();
  for (std::size_t block_rows : {std::size_t{37}, std::size_t{65536}}) {
    const auto prompts = open_everywhere(comm, dir / "create.jsonl", text);
    const auto output = dir / ("created_" + std::to_string(block_rows) + ".h5");
    expect(create_file(comm, prompts, output, block_rows).empty(), "the file is created");
    if (comm.rank() != 0) continue;
    expect(fs::exists(output) && !fs::exists(store::unpublished_path(output)), "the file is published");
    std::vector<std::string> texts, ids, metas;
    for (std::size_t row = 0; row < text.size(); ++row) {
      const auto record = spec::parse_prompt(text[row], row, "create.jsonl", positions());
      texts.push_back(record.text);
      ids.push_back(record.id);
      metas.push_back(record.meta_json);
    }
    expect(read_strings_raw(output.string(), "/prompts/text") == texts, "every text is the prompt's");
    expect(read_strings_raw(output.string(), "/prompts/id") == ids, "every id is the prompt's");
    expect(read_strings_raw(output.string(), "/prompts/meta") == metas, "every meta is the prompt's");
    const auto stored = read_numbers<std::int32_t>(output.string(), "/prompts/positions");
    expect(stored.size() == 2 * 997 && stored == all_positions(prompts),
           "every row's positions are one process's");
  }
  // The last rank's node sees a changed line: rank 0 reports it, no file is left, no rank hangs.
  if (comm.size() > 1) {
    auto changed = lines();
    changed[990].replace(changed[990].find("\"p990\""), 6, "\"q990\"");
    const auto last = comm.size() - 1;
    if (comm.rank() == last) {
      std::ofstream out(dir / "create_copy.jsonl", std::ios::binary);
      for (const auto& line : changed) out << line << '\n';
    }
    comm.barrier();
    // Planning read the file before it changed; the strings are read after.
    const auto prompts =
        open_everywhere(comm, dir / "create_changed.jsonl", lines(), dir / "create_copy.jsonl");
    auto measured = measure_prompts_in_parts(comm, prompts, 1);
    (void)measured;
    std::optional<store::FileLayout> layout;
    if (comm.rank() == 0) {
      auto one = plan::scan_prompts(*prompts.prompts_file, positions(), bytes_tokenizer(), true, 1);
      layout = layout_of(one);
    }
    const auto output = dir / "changed.h5";
    std::string error;
    try {
      (void)create_with_every_rank(
          comm, prompts, 1, output, [&] { return std::move(*layout); }, 64);
    } catch (const InputError& e) {
      error = e.what();
    }
    comm.barrier();
    if (comm.rank() == 0) {
      expect(error.find("create_copy.jsonl:991: the line changed since the job read the prompts file") !=
                 std::string::npos,
             "another rank's unreadable line is rank 0's error: " + error);
      expect(!fs::exists(output) && !fs::exists(store::unpublished_path(output)), "no file is left");
    }
  }
  // Rank 0 cannot make the file: every other rank is told to send nothing.
  {
    const auto prompts = open_everywhere(comm, dir / "create2.jsonl", text);
    const auto error = create_file(comm, prompts, dir / "missing" / "out.h5", 16);
    if (comm.rank() == 0)
      expect(error.find("does not exist") != std::string::npos, "rank 0's own error: " + error);
    // Nor when making its layout throws (it copies N-sized arrays: memory can run out there).
    const auto no_layout = create_file(
        comm, prompts, dir / "no_layout.h5", 16,
        [](const plan::PromptShapes&) -> store::FileLayout { throw InternalError("no layout here"); });
    if (comm.rank() == 0) expect(no_layout.find("no layout here") != std::string::npos, "the layout's error");
  }
  // Rank 0 fails midway, after it asked ranks to send (a layout of 400 rows: the first block of a
  // part past row 400 is refused): a rank still sending is told to stop, and no file is left.
  {
    const auto prompts = open_everywhere(comm, dir / "create3.jsonl", text);
    const auto output = dir / "midway.h5";
    PartSent sent;
    const auto error = create_file(
        comm, prompts, output, 16,
        [](const plan::PromptShapes& all) {
          auto fewer = all;
          fewer.n_tokens.resize(400);
          return layout_of(fewer);
        },
        &sent);
    // Rank 0 fails within the first round of blocks (the first block of a part past row 400), so no
    // rank sends its whole part: one asked is told it is done and ends early.
    const auto [first, end] = plan::scan_part_rows(997, static_cast<std::size_t>(comm.rank()),
                                                   static_cast<std::size_t>(comm.size()));
    if (comm.rank() != 0) {
      expect(sent.rows < end - first, "rank " + std::to_string(comm.rank()) + " sent " +
                                          std::to_string(sent.rows) + " of its " +
                                          std::to_string(end - first) + " rows");
      expect(!sent.asked || sent.ended_early, "a rank asked for its part is told to stop");
    }
    if (comm.rank() == 0) {
      expect(error.find("not a block of rows still to write") != std::string::npos,
             "rank 0's error midway: " + error);
      expect(!fs::exists(output) && !fs::exists(store::unpublished_path(output)), "no file is left");
    }
  }
  // More ranks than prompts: rank 0's part, and others, are empty.
  {
    const std::vector<std::string> three{R"("one")", R"({"prompt": "two", "id": "b", "meta": {"k": 2}})",
                                         R"({"prompt": "three three"})"};
    const auto prompts = open_everywhere(comm, dir / "three.jsonl", three);
    const auto output = dir / "three.h5";
    expect(create_file(comm, prompts, output, 16).empty(), "three prompts on any number of ranks");
    if (comm.rank() == 0) {
      expect(read_strings_raw(output.string(), "/prompts/text") ==
                 std::vector<std::string>{"one", "two", "three three"},
             "three texts");
      expect(read_strings_raw(output.string(), "/prompts/id") == std::vector<std::string>{"0", "b", "2"},
             "three ids");
      expect(read_strings_raw(output.string(), "/prompts/meta") ==
                 std::vector<std::string>{"{}", R"({"k":2})", "{}"},
             "three metas");
      expect(read_numbers<std::int32_t>(output.string(), "/prompts/positions") == all_positions(prompts),
             "three rows of positions");
    }
  }
}

void run_all(const Communicator& comm, const fs::path& dir) {
  auto text = lines();
  // The merge of every rank's part is one process's scan.
  {
    const auto prompts = open_everywhere(comm, dir / "good.jsonl", text);
    auto measured = measure_prompts_in_parts(comm, prompts, core_share(comm));
    // Every rank keeps the positions of its own rows, which are one process's.
    const auto one = plan::scan_prompts(*prompts.prompts_file, positions(), bytes_tokenizer(), true, 1);
    const auto [first, end] = plan::scan_part_rows(997, static_cast<std::size_t>(comm.rank()),
                                                   static_cast<std::size_t>(comm.size()));
    expect(measured.mine.first == first, "a rank's part starts at its first row");
    const auto all = all_positions(prompts);
    // One process's positions are the definition's: {0, -1} of a line of 2 + (7k mod 40) tokens.
    bool defined = all.size() == 2 * 997;
    for (std::size_t k = 0; defined && k < 997; ++k)
      defined = all[2 * k] == 0 && all[2 * k + 1] == static_cast<std::int32_t>(1 + (k * 7) % 40);
    expect(defined, "one process's positions are the first and the last token of each line");
    expect(all.size() == 2 * 997 &&
               measured.mine.positions ==
                   std::vector<std::int32_t>(all.begin() + static_cast<std::ptrdiff_t>(2 * first),
                                             all.begin() + static_cast<std::ptrdiff_t>(2 * end)),
           "a rank's positions are one process's for its rows");
    if (comm.rank() == 0) {
      const auto shapes = std::move(*measured.merged).shapes(prompts);
      expect(shapes.n_tokens == one.n_tokens, "lengths equal one process's scan");
      expect(shapes.positions.empty(), "rank 0 holds no positions");
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
  create_with_every_rank_checks(comm, dir);
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
