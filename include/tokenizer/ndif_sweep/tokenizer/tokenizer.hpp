#pragma once
/// \file
/// A Hugging Face `tokenizer.json` engine. Pure: no I/O beyond reading the file it is given.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ndif::tokenizer {

/// Half-open range [first, second) of Unicode code points of the input string.
using Offset = std::pair<std::uint32_t, std::uint32_t>;

/// The result of encoding one string: token ids and, for each, the code-point range of the input
/// it came from (special tokens added by the post-processor get (0, 0), as the reference does).
struct Encoding {
  std::vector<std::int32_t> ids;
  std::vector<Offset> offsets;
};

/// A loaded tokenizer. Immutable after loading, so one instance may be used from several threads.
class Tokenizer {
 public:
  /// Loads a tokenizer.json file. Throws InputError naming the file and the unsupported feature or
  /// malformed key; a feature the engine does not implement is always an error, never ignored.
  [[nodiscard]] static Tokenizer from_file(const std::filesystem::path& path);
  /// Same, from the file's JSON text; `name` is used in error messages.
  [[nodiscard]] static Tokenizer from_json(std::string_view json_text, const std::string& name);

  /// Encodes UTF-8 `text`. With `add_special_tokens` the post-processor runs (BOS etc.).
  /// Throws InputError if `text` is not valid UTF-8.
  [[nodiscard]] Encoding encode(std::string_view text, bool add_special_tokens) const;

  /// Number of ids in the vocabulary, added tokens included.
  [[nodiscard]] std::size_t vocab_size() const noexcept;

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ndif::tokenizer
