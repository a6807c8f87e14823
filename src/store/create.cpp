#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <set>
#include <system_error>

#include "h5.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/store/output_file.hpp"

namespace ndif::store {

using h5::check;
using h5::check_id;
using h5::Handle;

namespace {

/// Chunks of about this many bytes: one batch write touches few chunks, and a reader that wants
/// one row does not read much more than it needs.
constexpr std::size_t kTargetChunkBytes = std::size_t{2} << 20;
/// HDF5 refuses chunks of 4 GiB or more.
constexpr std::size_t kMaxChunkBytes = (std::size_t{4} << 30) - 1;
/// Half the entries of a node of the chunk index (H5Pset_istore_k; HDF5's default is 32).
constexpr unsigned kChunkIndexHalfNode = 256;

void check_output_path(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw InputError("output " + path.string() + " is a directory; give a file name such as " +
                     (path / "sweep.h5").string());
  if (fs::exists(path, ec))
    throw InternalError("create_output_file: " + path.string() +
                        " already exists; check_existing decides first");
  const fs::path parent = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  if (!fs::exists(parent, ec))
    throw InputError("output " + path.string() + ": directory " + parent.string() +
                     " does not exist; create it or choose another output path");
  if (!fs::is_directory(parent, ec))
    throw InputError("output " + path.string() + ": " + parent.string() + " is not a directory");
  if (::access(parent.c_str(), W_OK) != 0)
    throw InputError("output " + path.string() + ": directory " + parent.string() +
                     " is not writable; choose another output path");
}

void check_layout(const FileLayout& layout) {
  const std::size_t n = layout.n_tokens.size();
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw InternalError("file layout: " + what);
  };
  require(n > 0, "no prompts");
  const std::size_t strings = layout.prompt_strings ? 0 : n;
  require(layout.text.size() == strings && layout.id.size() == strings && layout.meta.size() == strings &&
              layout.batch_of_row.size() == n && layout.order.size() == n,
          "per-prompt arrays differ in length");
  require(layout.positions_per_row > 0, "no positions per prompt");
  require(layout.positions.size() == (layout.positions_from_ranks ? 0 : n * layout.positions_per_row),
          "positions is not N x P (or empty, written by the ranks)");
  require(!layout.batch_start.empty() && layout.batch_start.size() == layout.batch_count.size(),
          "batch start and count differ in length or are empty");
  for (std::size_t b = 0; b < layout.batch_start.size(); ++b)
    require(layout.batch_start[b] >= 0 && layout.batch_count[b] > 0 &&
                static_cast<std::size_t>(layout.batch_start[b] + layout.batch_count[b]) <= n,
            "batch " + std::to_string(b) + " lies outside the order");
  require(layout.hidden > 0, "hidden size is 0");
  require(!layout.probes.empty(), "no probes");
  std::set<std::string> names;
  for (const ProbeLayout& probe : layout.probes) {
    require(!probe.name.empty() && probe.name.find('/') == std::string::npos && probe.name != "." &&
                names.insert(probe.name).second,
            "probe name \"" + probe.name + "\" is empty, contains '/', or repeats");
    require(!probe.layers.empty(), "probe " + probe.name + " has no layers");
  }
}

Handle create_group(hid_t loc, const std::string& name, bool track_order = false) {
  Handle gcpl(check_id(H5Pcreate(H5P_GROUP_CREATE), "create a group creation property list"));
  if (track_order)
    check(H5Pset_link_creation_order(gcpl.get(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED),
          "track creation order of " + name);
  return Handle(
      check_id(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), "create group " + name));
}

/// A contiguous dataset allocated at creation, its values still to write.
Handle create_allocated(hid_t loc, const std::string& name, hid_t file_type,
                        const std::vector<hsize_t>& dims) {
  Handle space(check_id(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                        "create the dataspace of " + name));
  Handle dcpl(check_id(H5Pcreate(H5P_DATASET_CREATE), "create a dataset creation property list"));
  check(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY), "set early allocation for " + name);
  return Handle(
      check_id(H5Dcreate2(loc, name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
               "create dataset " + name));
}

/// A contiguous dataset allocated at creation and written whole from `data`.
void create_filled(hid_t loc, const std::string& name, hid_t file_type, hid_t mem_type,
                   const std::vector<hsize_t>& dims, const void* data) {
  Handle dataset = create_allocated(loc, name, file_type, dims);
  check(H5Dwrite(dataset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "write " + name);
  dataset.close("close " + name);
}

template <typename T>
void create_numbers(hid_t loc, const std::string& name, hid_t file_type, const std::vector<T>& values,
                    std::vector<hsize_t> dims = {}) {
  if (dims.empty()) dims = {values.size()};
  create_filled(loc, name, file_type, h5::native_type<T>(), dims, values.data());
}

void write_string_rows(hid_t dataset, hid_t type, const std::string& name, hsize_t first,
                       const std::vector<const char*>& values) {
  const hsize_t start[1] = {first}, count[1] = {values.size()};
  Handle file_space(check_id(H5Dget_space(dataset), "get the dataspace of " + name));
  check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
        "select rows of " + name);
  Handle memory_space(
      check_id(H5Screate_simple(1, count, nullptr), "create a dataspace for rows of " + name));
  check(H5Dwrite(dataset, type, memory_space.get(), file_space.get(), H5P_DEFAULT, values.data()),
        "write rows of " + name);
}

/// /prompts/text, id and meta, a block of rows at a time from the layout's source (or its vectors).
void create_prompt_strings(hid_t prompts, const FileLayout& layout) {
  const std::size_t n = layout.n_tokens.size();
  Handle type = h5::utf8_string_type();
  const char* names[3] = {"text", "id", "meta"};
  Handle datasets[3] = {create_allocated(prompts, names[0], type.get(), {n}),
                        create_allocated(prompts, names[1], type.get(), {n}),
                        create_allocated(prompts, names[2], type.get(), {n})};
  // Every row exactly once, whatever order the blocks come in.
  std::vector<bool> written(n, false);
  std::size_t rows_written = 0;
  auto write_block = [&](std::size_t first, const PromptStrings& block) {
    const std::size_t rows = block.text.size();
    if (rows == 0 || first > n || rows > n - first || block.id.size() != rows || block.meta.size() != rows ||
        std::find(written.begin() + static_cast<std::ptrdiff_t>(first),
                  written.begin() + static_cast<std::ptrdiff_t>(first + rows),
                  true) != written.begin() + static_cast<std::ptrdiff_t>(first + rows))
      throw InternalError("file layout: the prompt strings of " + std::to_string(rows) + " rows from row " +
                          std::to_string(first) + " are not a block of rows still to write");
    std::fill(written.begin() + static_cast<std::ptrdiff_t>(first),
              written.begin() + static_cast<std::ptrdiff_t>(first + rows), true);
    rows_written += rows;
    const std::vector<const char*>* columns[3] = {&block.text, &block.id, &block.meta};
    for (int k = 0; k < 3; ++k)
      write_string_rows(datasets[k].get(), type.get(), std::string("/prompts/") + names[k], first,
                        *columns[k]);
  };
  if (!layout.prompt_strings) {
    PromptStrings all;
    for (std::size_t r = 0; r < layout.text.size(); ++r) {
      all.text.push_back(layout.text[r].c_str());
      all.id.push_back(layout.id[r].c_str());
      all.meta.push_back(layout.meta[r].c_str());
    }
    write_block(0, all);
  } else {
    PromptStrings block;
    while (const auto first = layout.prompt_strings(block)) {
      write_block(*first, block);
      block = {};
    }
  }
  if (rows_written != n)
    throw InternalError("file layout: the prompt strings of " + std::to_string(n - rows_written) + " of " +
                        std::to_string(n) + " rows never came");
  for (int k = 0; k < 3; ++k) datasets[k].close(std::string("close /prompts/") + names[k]);
}

void create_activations(hid_t acts, const FileLayout& layout, const ProbeLayout& probe) {
  const std::string name = "/acts/" + probe.name;
  const hsize_t n = layout.n_tokens.size();
  const std::vector<hsize_t> dims{n, probe.layers.size(), layout.positions_per_row, layout.hidden};
  const std::size_t row_bytes =
      probe.layers.size() * layout.positions_per_row * layout.hidden * element_size(layout.dtype);
  if (row_bytes > kMaxChunkBytes)
    throw InputError("probe \"" + probe.name + "\": one prompt's activations are " +
                     std::to_string(row_bytes) +
                     " bytes, over HDF5's 4 GiB chunk limit; split the probe's layers into several probes");
  const hsize_t rows_per_chunk = std::clamp<hsize_t>(kTargetChunkBytes / row_bytes, 1, n);
  const std::vector<hsize_t> chunk{rows_per_chunk, dims[1], dims[2], dims[3]};

  Handle space(check_id(H5Screate_simple(4, dims.data(), nullptr), "create the dataspace of " + name));
  Handle dcpl(check_id(H5Pcreate(H5P_DATASET_CREATE), "create a dataset creation property list"));
  check(H5Pset_chunk(dcpl.get(), 4, chunk.data()), "set the chunk shape of " + name);
  // Every chunk exists from the start and nothing ever changes the dataset's metadata during a run:
  // ranks then only write raw bytes, which is what keeps flagged batches intact across crashes.
  check(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY), "set early allocation for " + name);
  check(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), "turn off fill values for " + name);
  Handle type = h5::activation_type(layout.dtype);
  Handle dataset(check_id(
      H5Dcreate2(acts, probe.name.c_str(), type.get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
      "create dataset " + name));
  h5::write_attribute(dataset.get(), "module", probe.module);
  h5::write_attribute(dataset.get(), "output_index", std::int64_t{probe.output_index.value_or(-1)});
  h5::write_attribute(dataset.get(), "layers", probe.layers);
  h5::write_attribute(dataset.get(), "layers_text", probe.layers_text);
  h5::write_attribute(dataset.get(), "dtype", std::string(dtype_name(layout.dtype)));
  dataset.close("close " + name);
}

void write_contents(hid_t file, const FileLayout& layout) {
  h5::write_attribute(file, "format", std::string(kFormat));
  h5::write_attribute(file, "job", layout.job_json);
  h5::write_attribute(file, "job_hash", layout.job_hash);
  h5::write_attribute(file, "model", layout.model);
  h5::write_attribute(file, "model_key", layout.model_key);
  h5::write_attribute(file, "tokenizer_sha256", layout.tokenizer_sha256);
  h5::write_attribute(file, "tool_version", layout.tool_version);
  h5::write_attribute(file, "created_utc", utc_now_iso8601());

  const hsize_t n = layout.n_tokens.size();
  const std::size_t batches = layout.batch_start.size();
  {
    Handle prompts = create_group(file, "prompts");
    create_prompt_strings(prompts.get(), layout);
    create_numbers(prompts.get(), "n_tokens", H5T_STD_I32LE, layout.n_tokens);
    if (layout.positions_from_ranks)
      create_allocated(prompts.get(), "positions", H5T_STD_I32LE, {n, layout.positions_per_row})
          .close("close /prompts/positions");
    else
      create_numbers(prompts.get(), "positions", H5T_STD_I32LE, layout.positions,
                     {n, layout.positions_per_row});
    create_numbers(prompts.get(), "batch", H5T_STD_I32LE, layout.batch_of_row);
    prompts.close("close /prompts");
  }
  {
    Handle group = create_group(file, "batches");
    create_numbers(group.get(), "done", H5T_STD_U8LE, std::vector<std::uint8_t>(batches, 0));
    create_numbers(group.get(), "order", H5T_STD_I64LE, layout.order);
    create_numbers(group.get(), "start", H5T_STD_I64LE, layout.batch_start);
    create_numbers(group.get(), "count", H5T_STD_I64LE, layout.batch_count);
    create_numbers(group.get(), "checksum", H5T_STD_U64LE, std::vector<std::uint64_t>(batches, 0));
    create_numbers(group.get(), "attempts", H5T_STD_I32LE, std::vector<std::int32_t>(batches, 0));
    create_numbers(group.get(), "seconds", H5T_IEEE_F64LE, std::vector<double>(batches, 0.0));
    create_numbers(group.get(), "bytes", H5T_STD_I64LE, std::vector<std::int64_t>(batches, 0));
    create_numbers(group.get(), "nonfinite", H5T_STD_I64LE, std::vector<std::int64_t>(batches, 0));
    group.close("close /batches");
  }
  {
    // Creation order is tracked so that readers and writers agree on the probe order, which the
    // batch checksum depends on.
    Handle acts = create_group(file, "acts", true);
    for (const ProbeLayout& probe : layout.probes) create_activations(acts.get(), layout, probe);
    acts.close("close /acts");
  }
  {
    // One slot per batch for the NDIF job in flight for it (ParallelOutput::journal); all empty.
    Handle group = create_group(file, "journal");
    Handle type = h5::journal_type();
    const std::vector<h5::JournalRecord> empty(batches, h5::JournalRecord{});
    create_filled(group.get(), "jobs", type.get(), type.get(), {batches}, empty.data());
    group.close("close /journal");
  }
  create_group(file, "runs").close("close /runs");
}

}  // namespace

std::string utc_now_iso8601() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

std::filesystem::path unpublished_path(const std::filesystem::path& path) {
  return path.string() + ".creating";
}

std::filesystem::path create_unpublished(const std::filesystem::path& path, const FileLayout& layout) {
  check_output_path(path);
  check_layout(layout);
  if (!is_activation_dtype(layout.dtype))
    throw InputError(std::string("dtype \"") + dtype_name(layout.dtype) +
                     "\" is not one of float16, bfloat16, float32");

  const std::filesystem::path temporary = unpublished_path(path);
  try {
    Handle fapl = h5::serial_access(false);
    // The chunk index of /acts has a chunk a row for a model's rows (80 x 8192 x 2 bytes), so N
    // entries, all made here (early allocation). B-tree nodes of 512 entries instead of HDF5's 64
    // make that twice as fast (bench/create_bench, 10^7 rows: 6.5 s against 13 s) and the tree
    // shallower; a node is then about 30 KB, which a batch's chunk lookups read. (The
    // version-2 formats' fixed-array index would be faster still, but their superblock records an
    // open writer: readers could not open a live file, nor anyone a file whose run crashed.)
    Handle fcpl(check_id(H5Pcreate(H5P_FILE_CREATE), "create a file creation property list"));
    check(H5Pset_istore_k(fcpl.get(), kChunkIndexHalfNode), "set the chunk index's node size");
    Handle file(check_id(H5Fcreate(temporary.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()),
                         "create " + temporary.string()));
    write_contents(file.get(), layout);
    file.close("close " + temporary.string());
  } catch (...) {
    discard_unpublished(temporary);
    throw;
  }
  return temporary;
}

void publish(const std::filesystem::path& temporary, const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec)
    throw StorageError("cannot rename " + temporary.string() + " to " + path.string() + ": " + ec.message());
}

void discard_unpublished(const std::filesystem::path& temporary) noexcept {
  std::error_code ignored;
  std::filesystem::remove(temporary, ignored);
}

void create_output_file(const std::filesystem::path& path, const FileLayout& layout) {
  if (layout.positions_from_ranks)
    throw InternalError(
        "create_output_file: the ranks' positions need create_unpublished and write_positions");
  publish(create_unpublished(path, layout), path);
}

}  // namespace ndif::store
