// The receiving path of one rank without a network: decode a batch's result file (torch.save, with
// or without zstd) and write its rows into the output file through parallel HDF5, flag included,
// exactly as a run does (remote::DecodePool running remote::decode_result,
// store::ParallelOutput::write_batch). Prints the throughput in GB/s of activations and the CPU
// seconds per GB (getrusage: user + system, both threads).
//
//   write_bench [--rows 1024] [--batch 32] [--layers 80] [--hidden 8192] [--probes 1] [--dir /tmp]
//               [--repeat 2] [--malloc-default]
//
// With --probes N the layers are read by N probes of layers/N each (a job reading, say, the residual
// stream and the attention output): a result's rows are then copied out per probe.
//
// Rows are written in two orders: the plan's order for prompts sorted by length (each batch's rows
// scattered over the file: a random permutation, the worst case) and in file order (batches of
// consecutive rows). The file lands in the page cache: this measures the client's CPU and memory
// traffic, not the disk. Each case runs with the results decoded on two threads and on one while
// the main thread writes those decoded (ndif-sweep runs as many as the rank's share of cores:
// WorkerSettings::decode_threads), and decoded inline, one after the other. Figures are kept in
// docs/performance.md.
#include <fmt/format.h>
#include <mpi.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "ndif_sweep/core/memory.hpp"
#include "ndif_sweep/remote/decode_pool.hpp"
#include "ndif_sweep/remote/request.hpp"
#include "ndif_sweep/remote/result.hpp"
#include "ndif_sweep/store/output_file.hpp"
#include "ndif_sweep/store/parallel_output.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"
#include "result_files.hpp"

namespace {

using namespace ndif;
using Clock = std::chrono::steady_clock;

struct Options {
  std::int64_t rows = 1024, batch = 32, layers = 80, hidden = 8192, probes = 1;
  std::filesystem::path dir = "/tmp";
  int repeat = 2;
};

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto s = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6;
  };
  return s(usage.ru_utime) + s(usage.ru_stime);
}

store::FileLayout layout_for(const Options& o, const std::vector<std::int64_t>& order) {
  store::FileLayout layout;
  layout.job_json = "{}";
  layout.job_hash = std::string(64, '0');
  layout.model = "bench/model";
  layout.model_key = "bench";
  layout.tokenizer_sha256 = std::string(64, '0');
  layout.tool_version = "bench";
  const auto n = static_cast<std::size_t>(o.rows);
  for (std::size_t r = 0; r < n; ++r) {
    layout.text.push_back("prompt " + std::to_string(r));
    layout.id.push_back(std::to_string(r));
    layout.meta.push_back("{}");
  }
  layout.n_tokens.assign(n, 16);
  layout.positions.assign(n, 15);
  layout.positions_per_row = 1;
  layout.order = order;
  layout.batch_of_row.assign(n, 0);
  for (std::size_t k = 0; k < n; ++k)
    layout.batch_of_row[static_cast<std::size_t>(order[k])] = static_cast<std::int32_t>(k / o.batch);
  for (std::int64_t start = 0; start < o.rows; start += o.batch) {
    layout.batch_start.push_back(start);
    layout.batch_count.push_back(std::min(o.batch, o.rows - start));
  }
  for (std::int64_t p = 0; p < o.probes; ++p) {
    std::vector<int> layers(static_cast<std::size_t>(o.layers / o.probes));
    std::iota(layers.begin(), layers.end(), 0);
    layout.probes.push_back({fmt::format("probe{}", p), fmt::format("model.layers.{{layer}}.part{}", p),
                             std::nullopt, layers, "all"});
  }
  layout.hidden = static_cast<std::size_t>(o.hidden);
  layout.dtype = DType::float16;
  return layout;
}

/// A result file as the server sends it: {"id", "result": {node: tensor}} with finite float16 values.
std::vector<std::byte> result_file(const remote::ExpectedResult& expected, std::uint64_t seed, bool zstd) {
  std::vector<std::byte> data(static_cast<std::size_t>(expected.data_bytes()));
  std::mt19937_64 random(seed);
  for (std::size_t i = 0; i + 8 <= data.size(); i += 8) {
    // float16 with exponents below the maximum: finite, like activations.
    const std::uint64_t v = random() & 0xBBFFBBFFBBFFBBFFULL;
    std::memcpy(data.data() + i, &v, 8);
  }
  auto file = remote::testing::g2_file_for(expected, std::move(data));
  return zstd ? remote::testing::zstd_of(file) : file;
}

struct Figures {
  double gb_per_s = 0, cpu_s_per_gb = 0, decode_share = 0;
};

Figures run(const Options& o, bool scattered, bool zstd, unsigned threads) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(o.rows));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  if (scattered) std::shuffle(order.begin(), order.end(), std::mt19937_64(7));
  const auto path = o.dir / fmt::format("ndif-write-bench-{}.h5", getpid());
  std::filesystem::remove(path);
  store::create_output_file(path, layout_for(o, order));
  auto output = store::ParallelOutput::open(path, MPI_COMM_WORLD);

  remote::ExpectedResult expected;
  expected.saved_node = 5;
  expected.probe_layers.assign(static_cast<std::size_t>(o.probes), o.layers / o.probes);
  expected.positions = 1;
  expected.hidden = o.hidden;
  expected.dtype = DType::float16;
  auto expected_for = [&](std::size_t b) {
    auto e = expected;
    e.batch = std::min(o.batch, o.rows - static_cast<std::int64_t>(b) * o.batch);
    return e;
  };
  // Every batch has the same size here but the last; results are made before the clock starts.
  std::vector<std::vector<std::byte>> files;
  for (std::size_t b = 0; static_cast<std::int64_t>(b) * o.batch < o.rows; ++b)
    files.push_back(result_file(expected_for(b), static_cast<std::uint64_t>(b) * o.batch, zstd));
  double wall = 0, cpu = 0, decode = 0, bytes = 0;
  for (int pass = 0; pass < o.repeat; ++pass) {
    // Each pass decodes its own copy, as a run decodes the buffer it downloaded (decode_result
    // takes it and reads the tensor where it lies).
    std::vector<std::vector<std::byte>> received = files;
    remote::DecodePool decoder(threads, [] {});
    const auto t0 = Clock::now();
    const double c0 = cpu_seconds();
    double decoding = 0;
    auto write = [&](remote::DecodeOutcome& d) {
      const auto b = static_cast<std::size_t>(d.key);
      if (!d.result) throw std::runtime_error("write_bench: a result did not decode: " + d.error);
      std::vector<std::span<const std::byte>> parts;
      for (const auto& p : d.result->probes) parts.emplace_back(p.bytes);
      const auto start = static_cast<std::int64_t>(b) * o.batch;
      const std::span<const std::int64_t> rows(order.data() + start,
                                               static_cast<std::size_t>(expected_for(b).batch));
      output.write_batch(static_cast<std::int32_t>(b), rows, parts,
                         store::BatchStats{1, 0.0, static_cast<std::int64_t>(files[b].size()), 0});
      if (pass == 0) bytes += static_cast<double>(expected_for(b).data_bytes());
    };
    // As a worker holds them: at most four results decoding or waiting to be written (a run's
    // bound is twice max_inflight, 2 by default).
    constexpr std::size_t kHeld = 4;
    for (std::size_t b = 0; b < files.size(); ++b) {
      const auto d0 = Clock::now();
      decoder.submit(static_cast<std::int64_t>(b), std::move(received[b]), expected_for(b));
      if (threads == 0) decoding += std::chrono::duration<double>(Clock::now() - d0).count();
      for (auto& d : decoder.take()) write(d);
      while (decoder.pending() >= kHeld)
        for (auto& d : decoder.take(std::chrono::milliseconds(1000))) write(d);
    }
    while (decoder.pending() > 0)
      for (auto& d : decoder.take(std::chrono::milliseconds(1000))) write(d);
    const double w = std::chrono::duration<double>(Clock::now() - t0).count();
    // The best pass: the first also pays for the file's first touch of the page cache.
    if (pass == 0 || w < wall) {
      wall = w;
      cpu = cpu_seconds() - c0;
      decode = decoding;
    }
  }
  output.close();
  std::filesystem::remove(path);
  const double gb = bytes / 1e9;
  return Figures{gb / wall, cpu / gb, decode / wall};
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool malloc_default = false;
  std::string dir = o.dir.string();
  CLI::App app{"write_bench: one rank's decode and parallel-HDF5 write of batch results, without a network"};
  app.add_option("--rows", o.rows, "rows of the file")->check(CLI::PositiveNumber);
  app.add_option("--batch", o.batch, "rows per batch")->check(CLI::PositiveNumber);
  app.add_option("--layers", o.layers, "layers per row, over all probes")->check(CLI::PositiveNumber);
  app.add_option("--hidden", o.hidden, "hidden size")->check(CLI::PositiveNumber);
  app.add_option("--probes", o.probes, "probes the layers are divided among")->check(CLI::PositiveNumber);
  app.add_option("--dir", dir, "where the file is written (best in the page cache: /tmp)");
  app.add_option("--repeat", o.repeat, "passes; the best is reported")->check(CLI::PositiveNumber);
  app.add_flag("--malloc-default", malloc_default, "measure with glibc's default malloc settings");
  CLI11_PARSE(app, argc, argv);
  if (o.layers % o.probes != 0) {
    std::cerr << "write_bench: --layers must be a multiple of --probes\n";
    return 2;
  }
  o.dir = dir;
  // As ndif-sweep does, unless asked not to.
  if (!malloc_default) keep_large_buffers();
  MPI_Init(&argc, &argv);
  const double batch_mb = static_cast<double>(o.batch * o.layers * o.hidden * 2) / 1e6;
  std::cout << fmt::format(
      "{} rows of {} layers x 1 position x {} hidden in {} probe(s), float16, batches of {} ({:.1f} MB); "
      "best of {} passes\n",
      o.rows, o.layers, o.hidden, o.probes, o.batch, batch_mb, o.repeat);
  std::cout << fmt::format("{:<28} {:<8} {:>7} {:>9} {:>13}\n", "case", "decode", "GB/s", "CPU s/GB",
                           "decode share");
  for (const bool zstd : {false, true}) {
    for (const bool scattered : {true, false}) {
      for (const unsigned threads : {2U, 1U, 0U}) {
        const auto f = run(o, scattered, zstd, threads);
        // The share of the wall time spent decoding is measured where decoding is in line.
        std::cout << fmt::format(
                         "{:<28} {:<8} {:>7.2f} {:>9.3f} {:>13}\n",
                         fmt::format("{}, {}", zstd ? "G4 zstd" : "G2 plain",
                                     scattered ? "rows scattered" : "rows in order"),
                         threads == 0 ? std::string("inline") : fmt::format("{} thr", threads), f.gb_per_s,
                         f.cpu_s_per_gb,
                         threads > 0 ? std::string("-") : fmt::format("{:.0f}%", 100 * f.decode_share))
                  << std::flush;
      }
    }
  }
  MPI_Finalize();
  return 0;
}
