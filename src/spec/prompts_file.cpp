#include "ndif_sweep/spec/prompts_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/core/parallel.hpp"

namespace ndif::spec {

namespace {

constexpr std::size_t kReadBytes = std::size_t{1} << 20;

std::uint64_t hash_line(std::string_view line) noexcept {
  return xxh3_64(std::as_bytes(std::span<const char>(line.data(), line.size())));
}

}  // namespace

struct PromptsFile::Descriptor {
  int fd = -1;
  explicit Descriptor(int f) : fd(f) {}
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  ~Descriptor() { ::close(fd); }
};

namespace {

int open_prompts(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw InputError(path.string() + ": the prompts file is a directory; give the path of a file");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw InputError(path.string() + ": cannot open the prompts file (does it exist and is it readable?)");
  return fd;
}

}  // namespace

PromptsFile PromptsFile::index(const std::filesystem::path& path) {
  const std::string name = path.string();
  const int fd = open_prompts(path);
  PromptsFile file;
  file.fd_ = std::make_shared<const Descriptor>(fd);
  file.path_ = path;

  // Every newline ends a line; a line begins at the byte after a newline, if there is one.
  Sha256 digest;
  std::string buffer(kReadBytes, '\0');
  std::string carry;  // the start of a line that continues in the next read
  std::uint64_t offset = 0;
  bool open_line = false;
  char last = '\0';
  for (;;) {
    const ssize_t got = ::read(fd, buffer.data(), buffer.size());
    if (got < 0) {
      if (errno == EINTR) continue;
      throw InputError(name + ": read error in the prompts file: " + std::strerror(errno));
    }
    if (got == 0) break;
    const std::string_view chunk(buffer.data(), static_cast<std::size_t>(got));
    digest.update(chunk);
    std::size_t at = 0;
    while (at < chunk.size()) {
      if (!open_line) {
        file.starts_.push_back(offset + at);
        open_line = true;
      }
      const auto newline = chunk.find('\n', at);
      if (newline == std::string_view::npos) {
        carry.append(chunk.substr(at));
        break;
      }
      const auto piece = chunk.substr(at, newline - at);
      if (carry.empty()) {
        file.hashes_.push_back(hash_line(piece));
      } else {
        carry.append(piece);
        file.hashes_.push_back(hash_line(carry));
        carry.clear();
      }
      open_line = false;
      at = newline + 1;
    }
    offset += chunk.size();
    last = chunk.back();
  }
  if (open_line) file.hashes_.push_back(hash_line(carry));
  file.bytes_ = offset;
  file.sha256_ = digest.finish_hex();
  // One newline ends the last line, so a file of one newline holds no prompt.
  if (offset == 0 || (offset == 1 && last == '\n'))
    throw InputError(name + ": the file is empty; it needs one prompt per line");
  file.starts_.push_back(last == '\n' ? offset : offset + 1);
  return file;
}

std::uint64_t PromptsFile::line_bytes(std::size_t first, std::size_t count) const {
  if (first > rows() || count > rows() - first)
    throw InternalError("PromptsFile::line_bytes: rows " + std::to_string(first) + " + " +
                        std::to_string(count) + " of " + std::to_string(rows()));
  return starts_[first + count] - starts_[first];
}

LineBlock PromptsFile::lines(std::size_t first, std::size_t count) const {
  if (first > rows() || count > rows() - first)
    throw InternalError("PromptsFile::lines: rows " + std::to_string(first) + " + " + std::to_string(count) +
                        " of " + std::to_string(rows()));
  LineBlock block;
  block.first_row = first;
  if (count == 0) return block;
  const std::uint64_t begin = starts_[first];
  const std::uint64_t end = std::min(starts_[first + count], bytes_);
  std::string raw(end - begin, '\0');
  for (std::size_t done = 0; done < raw.size();) {
    const ssize_t got =
        ::pread(fd_->fd, raw.data() + done, raw.size() - done, static_cast<off_t>(begin + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw InputError(path_.string() +
                       ": the prompts file is shorter than when the job read it (or cannot be "
                       "read); restore it, or start a new output file for the new prompts");
    done += static_cast<std::size_t>(got);
  }
  // The newlines are dropped, so that every line is one string_view of `text`.
  block.text.reserve(raw.size());
  block.begin.reserve(count + 1);
  for (std::size_t k = 0; k < count; ++k) {
    const std::size_t row = first + k;
    const auto line = std::string_view(raw).substr(starts_[row] - begin, starts_[row + 1] - 1 - starts_[row]);
    if (hash_line(line) != hashes_[row])
      throw InputError(path_.string() + ":" + std::to_string(row + 1) +
                       ": the line changed since the job read the prompts file; restore the file, or start "
                       "a new output file for the new prompts");
    block.begin.push_back(block.text.size());
    block.text.append(line);
  }
  block.begin.push_back(block.text.size());
  return block;
}

std::string PromptsFile::line(std::size_t row) const { return std::string(lines(row, 1).line(0)); }

namespace {

// The index as bytes: the file size, N, the SHA-256 (64 characters), N + 1 starts, N hashes, all
// integers as 8 bytes in this machine's order (every rank of a job runs the same binary).
void put_u64(std::string& out, std::uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }

std::uint64_t take_u64(std::string_view& in) {
  if (in.size() < sizeof(std::uint64_t))
    throw InternalError("PromptsFile::from_index: the index is cut short");
  std::uint64_t v = 0;
  std::memcpy(&v, in.data(), sizeof v);
  in.remove_prefix(sizeof v);
  return v;
}

}  // namespace

std::string PromptsFile::index_bytes() const {
  std::string out;
  out.reserve(8 * (3 + starts_.size() + hashes_.size()) + sha256_.size());
  put_u64(out, bytes_);
  put_u64(out, rows());
  out += sha256_;
  for (const auto v : starts_) put_u64(out, v);
  for (const auto v : hashes_) put_u64(out, v);
  return out;
}

PromptsFile PromptsFile::from_index(const std::filesystem::path& path, std::string_view index) {
  PromptsFile file;
  file.bytes_ = take_u64(index);
  const std::uint64_t n = take_u64(index);
  // 64 characters of SHA-256, N + 1 starts and N hashes; n is bounded first so that 16n cannot wrap.
  if (n == 0 || n > index.size() / 16 || index.size() != 64 + 16 * n + 8)
    throw InternalError("PromptsFile::from_index: not an index of " + path.string());
  file.sha256_ = std::string(index.substr(0, 64));
  index.remove_prefix(64);
  file.starts_.resize(n + 1);
  for (auto& v : file.starts_) v = take_u64(index);
  file.hashes_.resize(n);
  for (auto& v : file.hashes_) v = take_u64(index);
  for (std::size_t r = 0; r < n; ++r)
    if (file.starts_[r + 1] <= file.starts_[r])
      throw InternalError("PromptsFile::from_index: the line starts of " + path.string() +
                          " do not increase");
  if (file.starts_[0] != 0 || file.starts_[n] > file.bytes_ + 1 || file.starts_[n] < file.bytes_)
    throw InternalError("PromptsFile::from_index: the line starts of " + path.string() +
                        " are not its lines");

  const int fd = open_prompts(path);
  file.fd_ = std::make_shared<const Descriptor>(fd);
  file.path_ = path;
  struct stat info {};
  if (::fstat(fd, &info) != 0 || static_cast<std::uint64_t>(info.st_size) != file.bytes_)
    throw InputError(path.string() + ": the prompts file here has " + std::to_string(info.st_size) +
                     " bytes, the one rank 0 read " + std::to_string(file.bytes_) +
                     "; every node must see the same prompts file");
  return file;
}

std::vector<PromptRecord> parse_lines(const LineBlock& block, const std::filesystem::path& path,
                                      const std::vector<PositionSpec>& default_positions, unsigned threads) {
  const std::size_t n = block.size();
  std::vector<PromptRecord> records(n);
  run_slices(n, slice_count(n, threads, 256), [&](std::size_t, std::size_t from, std::size_t to) {
    for (std::size_t k = from; k < to; ++k)
      records[k] = parse_prompt(block.line(k), block.first_row + k, path, default_positions);
  });
  return records;
}

}  // namespace ndif::spec
