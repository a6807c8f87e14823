#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/zip_writer.hpp"
#include "ndif_sweep/store/readers.hpp"
#include "reading.hpp"

namespace ndif::store {

using h5::Handle;

namespace {

/// Rows read per block: bounded bytes, so an export of millions of rows runs in fixed memory.
constexpr std::size_t kBlockBytes = std::size_t{64} << 20;

std::string numpy_descr(DType dtype) {
  if (dtype == DType::float16) return "<f2";
  if (dtype == DType::bfloat16) return "<u2";  // NumPy has no bfloat16: the bit patterns, see readers.hpp
  if (dtype == DType::float32) return "<f4";
  throw StorageError(std::string("activation dtype \"") + dtype_name(dtype) + "\" cannot be exported");
}

/// The .npy header (format 1.0) for a C-order array.
std::string npy_header(const std::string& descr, const std::vector<std::uint64_t>& shape) {
  std::string dims;
  for (const std::uint64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1)
    dims.resize(dims.size() - 2);
  else
    dims.pop_back();
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64 bytes.
  const std::size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  std::string header = "\x93NUMPY";
  header += '\x01';
  header += '\x00';
  header += static_cast<char>(dict.size() & 0xff);
  header += static_cast<char>((dict.size() >> 8) & 0xff);
  return header + dict;
}

std::ofstream open_output_file(const std::filesystem::path& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw InputError("cannot write " + path.string() + "; check the export directory's permissions");
  return out;
}

void finish(std::ofstream& out, const std::filesystem::path& path) {
  out.close();
  if (!out) throw StorageError("writing " + path.string() + " failed (disk full?)");
}

void write_npy(const std::filesystem::path& path, const std::string& descr,
               const std::vector<std::uint64_t>& shape, const void* data, std::size_t bytes) {
  std::ofstream out = open_output_file(path);
  out << npy_header(descr, shape);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  finish(out, path);
}

/// Appends the file `part` to the archive as entry `name`: its CRC-32 is read first (a stored
/// entry's header precedes its data), then its bytes are copied, a block at a time.
void append_entry(ZipWriter& zip, const std::string& name, const std::filesystem::path& part) {
  std::ifstream in(part, std::ios::binary);
  if (!in) throw StorageError("cannot read back " + part.string());
  std::vector<char> buffer(std::size_t{1} << 20);
  const auto block = [&] {
    return std::span(reinterpret_cast<const std::byte*>(buffer.data()),
                     static_cast<std::size_t>(in.gcount()));
  };
  std::uint32_t crc = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    crc = crc32(block(), crc);
  }
  in.clear();
  in.seekg(0);
  zip.add(name, std::filesystem::file_size(part), crc, [&](const ZipWriter::Sink& sink) {
    while (in) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      sink(block());
    }
  });
}

/// Writes one probe as `<dir>/<probe>_layer<L>.npy` files, streaming blocks of rows.
std::vector<std::filesystem::path> export_probe_layers(const reading::ProbeReader& probe,
                                                       const std::vector<std::int64_t>& rows,
                                                       const std::filesystem::path& dir,
                                                       const std::string& prefix) {
  const std::uint64_t positions = probe.dims[2];
  const std::uint64_t hidden = probe.dims[3];
  const std::size_t slice_bytes = positions * hidden * probe.element_bytes;
  const std::string header = npy_header(numpy_descr(probe.status.dtype), {rows.size(), positions, hidden});

  std::vector<std::filesystem::path> paths;
  std::vector<std::ofstream> outs;
  for (const int layer : probe.status.layers) {
    paths.push_back(dir / (prefix + std::to_string(layer) + ".npy"));
    outs.push_back(open_output_file(paths.back()));
    outs.back() << header;
  }
  const std::size_t block_rows = std::max<std::size_t>(1, kBlockBytes / probe.row_bytes);
  std::vector<std::byte> block;
  for (std::size_t first = 0; first < rows.size(); first += block_rows) {
    const std::size_t n = std::min(block_rows, rows.size() - first);
    block.resize(n * probe.row_bytes);
    reading::read_rows(probe, std::span(rows).subspan(first, n), block);
    for (std::size_t l = 0; l < outs.size(); ++l)
      for (std::size_t r = 0; r < n; ++r)
        outs[l].write(reinterpret_cast<const char*>(block.data() + r * probe.row_bytes + l * slice_bytes),
                      static_cast<std::streamsize>(slice_bytes));
  }
  for (std::size_t l = 0; l < outs.size(); ++l) finish(outs[l], paths[l]);
  return paths;
}

nlohmann::json meta_json(hid_t file, const std::string& where,
                         const std::vector<reading::ProbeReader>& probes,
                         const std::vector<std::int64_t>& rows, ExportFormat format) {
  const auto ids = h5::read_strings(file, "prompts/id");
  const auto metas = h5::read_strings(file, "prompts/meta");
  const auto n_tokens = h5::read_all<std::int32_t>(file, "prompts/n_tokens");
  Handle positions_set = h5::open_dataset(file, "prompts/positions");
  const std::size_t p = h5::dataset_shape(positions_set.get(), where + ":/prompts/positions").at(1);
  positions_set.close("close /prompts/positions");
  const auto positions = h5::read_all<std::int32_t>(file, "prompts/positions");

  nlohmann::json probes_json = nlohmann::json::array();
  for (const reading::ProbeReader& probe : probes) {
    nlohmann::json files = nlohmann::json::array();
    if (format == ExportFormat::npz)
      files.push_back(probe.status.name + ".npz");
    else
      for (const int layer : probe.status.layers)
        files.push_back(probe.status.name + "_layer" + std::to_string(layer) + ".npy");
    probes_json.push_back(
        {{"name", probe.status.name},
         {"module", probe.status.module},
         {"output_index",
          probe.status.output_index < 0 ? nlohmann::json() : nlohmann::json(probe.status.output_index)},
         {"layers", probe.status.layers},
         {"shape", {rows.size(), probe.dims[2], probe.dims[3]}},
         {"files", files}});
  }
  nlohmann::json ids_json = nlohmann::json::array(), positions_json = nlohmann::json::array(),
                 tokens_json = nlohmann::json::array(), metas_json = nlohmann::json::array();
  for (const std::int64_t row : rows) {
    const auto r = static_cast<std::size_t>(row);
    ids_json.push_back(ids.at(r));
    positions_json.push_back(
        std::vector<std::int32_t>(positions.begin() + static_cast<std::ptrdiff_t>(r * p),
                                  positions.begin() + static_cast<std::ptrdiff_t>((r + 1) * p)));
    tokens_json.push_back(n_tokens.at(r));
    nlohmann::json meta = nlohmann::json::parse(metas.at(r), nullptr, false);
    metas_json.push_back(meta.is_discarded() ? nlohmann::json(metas[r]) : meta);
  }
  const DType dtype = probes.empty() ? DType::float16 : probes.front().status.dtype;
  return {{"format", h5::read_string_attribute(file, "format", where)},
          {"model", h5::read_string_attribute(file, "model", where)},
          {"model_key", h5::read_string_attribute(file, "model_key", where)},
          {"job_hash", h5::read_string_attribute(file, "job_hash", where)},
          {"source", where},
          {"dtype", probes.empty() ? "" : dtype_name(dtype)},
          {"stored_dtype", numpy_descr(dtype)},
          {"rows", rows.size()},
          {"probes", probes_json},
          {"ids", ids_json},
          {"positions", positions_json},
          {"n_tokens", tokens_json},
          {"meta", metas_json}};
}

}  // namespace

ExportFormat parse_export_format(const std::string& text) {
  if (text == "npy") return ExportFormat::npy;
  if (text == "npz") return ExportFormat::npz;
  throw InputError("--format \"" + text + "\" is not one of npy, npz");
}

void export_rows(const std::filesystem::path& path, const std::filesystem::path& dir, ExportFormat format) {
  Handle file = reading::open_output(path);
  const std::string where = path.string();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir))
    throw InputError("cannot create the export directory " + dir.string() + ": " +
                     (ec ? ec.message() : std::string("a file of that name exists")));

  const auto done = h5::read_all<std::uint8_t>(file.get(), "batches/done");
  const auto batch_of_row = h5::read_all<std::int32_t>(file.get(), "prompts/batch");
  std::vector<std::int64_t> rows;
  for (std::size_t r = 0; r < batch_of_row.size(); ++r)
    if (done.at(static_cast<std::size_t>(batch_of_row[r])) != 0) rows.push_back(static_cast<std::int64_t>(r));

  const std::vector<reading::ProbeReader> probes = reading::open_probes(file.get(), where);
  write_npy(dir / "rows.npy", "<i8", {rows.size()}, rows.data(), rows.size() * sizeof(std::int64_t));
  for (const reading::ProbeReader& probe : probes) {
    if (format == ExportFormat::npy) {
      export_probe_layers(probe, rows, dir, probe.status.name + "_layer");
      continue;
    }
    // A zip entry needs its size and CRC in its header, so the layers are first written as .npy
    // parts beside the archive and then copied in.
    const std::filesystem::path parts = dir / ("." + probe.status.name + ".npz.parts");
    std::filesystem::create_directories(parts, ec);
    if (ec) throw InputError("cannot create " + parts.string() + ": " + ec.message());
    const auto layer_files = export_probe_layers(probe, rows, parts, "layer");
    const std::filesystem::path archive = dir / (probe.status.name + ".npz");
    std::ofstream out = open_output_file(archive);
    ZipWriter zip([&](std::span<const std::byte> bytes) {
      out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    });
    for (const auto& part : layer_files) append_entry(zip, part.filename().string(), part);
    zip.finish();
    finish(out, archive);
    std::filesystem::remove_all(parts, ec);
  }
  std::ofstream meta = open_output_file(dir / "meta.json");
  meta << meta_json(file.get(), where, probes, rows, format).dump(2) << "\n";
  finish(meta, dir / "meta.json");
  file.close("close " + where);
}

}  // namespace ndif::store
