#pragma once
/// \file
/// Reads a tokenizer.json text in one streaming pass. The vocabulary and merges (nearly all of a
/// large file) go straight into their compact tables; only the small rest becomes a JSON tree.

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "bpe.hpp"

namespace ndif::tokenizer::detail {

struct TokenizerDocument {
  /// The whole file except `model.vocab` and `model.merges` when those were read into the tables.
  nlohmann::json root;
  /// `model.vocab` when it is an object of token -> id (otherwise it stays in `root`).
  std::optional<Vocabulary> vocab;
  /// `model.merges` when it is an array (otherwise it stays in `root`).
  std::optional<TokenPairs> merges;
};

/// Parses `text`. Throws InputError naming `name` for text that is not JSON, for a vocabulary id
/// that is not an integer in [0, 2^31), and for a merge that is neither "a b" nor ["a", "b"].
[[nodiscard]] TokenizerDocument read_tokenizer_json(std::string_view text, const std::string& name);

}  // namespace ndif::tokenizer::detail
