#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/plan/batch_plan.hpp"

namespace ndif::plan {

namespace {

std::size_t code_points(std::string_view utf8) {
  return static_cast<std::size_t>(std::count_if(
      utf8.begin(), utf8.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// A span is the n-th non-overlapping occurrence of a substring (negative n counts from the end),
// mapped to tokens through the encoding's code-point offsets: the first or last token whose range
// overlaps the occurrence. Tokens with an empty range (special tokens) never match.
std::int32_t resolve_span(const spec::PositionSpec& position, const std::string& text,
                          const tokenizer::Encoding& encoding, const std::string& prefix) {
  std::vector<std::size_t> starts;
  for (auto at = text.find(position.span); at != std::string::npos;
       at = text.find(position.span, at + position.span.size())) {
    starts.push_back(at);
  }
  if (starts.empty())
    throw InputError(prefix + "span \"" + position.span + "\" does not occur in the prompt");
  const auto count = static_cast<std::int64_t>(starts.size());
  const std::int64_t chosen = position.occurrence < 0 ? count + position.occurrence : position.occurrence;
  if (chosen < 0 || chosen >= count) {
    throw InputError(prefix + "span \"" + position.span + "\" occurs " + std::to_string(count) +
                     (count == 1 ? " time" : " times") + ", so occurrence " +
                     std::to_string(position.occurrence) + " does not exist (0 is the first, -1 the last)");
  }
  const auto begin =
      static_cast<std::uint32_t>(code_points(std::string_view(text).substr(0, starts[chosen])));
  const auto end = static_cast<std::uint32_t>(begin + code_points(position.span));
  std::optional<std::int32_t> found;
  for (std::size_t t = 0; t < encoding.offsets.size(); ++t) {
    const auto [first, last] = encoding.offsets[t];
    if (first < last && first < end && last > begin) {
      found = static_cast<std::int32_t>(t);
      if (!position.last_token) break;
    }
  }
  if (!found) {
    throw InputError(prefix + "span \"" + position.span +
                     "\" is covered by no token (the tokenizer's offsets do not " +
                     "reach it, e.g. because its normalizer removed it)");
  }
  return *found;
}

}  // namespace

std::vector<EncodedPrompt> encode_prompts(const std::vector<spec::PromptRecord>& prompts,
                                          const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                                          const std::filesystem::path& prompts_file) {
  const std::string name = prompts_file.string();
  std::vector<EncodedPrompt> encoded;
  encoded.reserve(prompts.size());
  for (const spec::PromptRecord& record : prompts) {
    const std::string prefix = name + ":" + std::to_string(record.line) + ": ";
    if (!prompts.empty() && record.positions.size() != prompts.front().positions.size()) {
      throw InputError(prefix + "this prompt has " + std::to_string(record.positions.size()) +
                       " positions but line " + std::to_string(prompts.front().line) + " has " +
                       std::to_string(prompts.front().positions.size()) +
                       "; every prompt must resolve to the same number of positions P = " +
                       std::to_string(prompts.front().positions.size()));
    }
    tokenizer::Encoding encoding;
    try {
      encoding = tokenizer.encode(record.text, add_special_tokens);
    } catch (const InputError& error) {
      throw InputError(prefix + error.what());
    }
    if (encoding.ids.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
      throw InputError(prefix + "the prompt has more than 2^31 tokens");
    }
    const auto n_tokens = static_cast<std::int64_t>(encoding.ids.size());
    EncodedPrompt prompt;
    prompt.positions.reserve(record.positions.size());
    for (const spec::PositionSpec& position : record.positions) {
      if (position.is_span) {
        prompt.positions.push_back(resolve_span(position, record.text, encoding, prefix));
        continue;
      }
      const std::int64_t index = position.index < 0 ? n_tokens + position.index : position.index;
      if (index < 0 || index >= n_tokens) {
        throw InputError(prefix + "position " + std::to_string(position.index) +
                         " is out of range for a prompt of " + std::to_string(n_tokens) +
                         (n_tokens == 1 ? " token" : " tokens"));
      }
      prompt.positions.push_back(static_cast<std::int32_t>(index));
    }
    prompt.ids = std::move(encoding.ids);
    encoded.push_back(std::move(prompt));
  }
  return encoded;
}

}  // namespace ndif::plan
