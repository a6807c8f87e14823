#pragma once
// The fast path of spec::append_strings, internal to the spec module; declared here so that its
// tests can tell which lines take it.

#include <cstddef>
#include <filesystem>
#include <string_view>

#include "ndif_sweep/spec/prompt_strings.hpp"

namespace ndif::spec::detail {

/// Appends row `row`'s text, id and meta to `into` when `line` is the plain case of a line
/// parse_prompt accepts, read through nlohmann's SAX events without a document, and returns true;
/// returns false, appending nothing, for anything else (append_strings then asks parse_prompt).
/// Throws parse_prompt's InputError for positions it would refuse.
bool append_plain(std::string_view line, std::size_t row, const std::filesystem::path& path,
                  StringBlock& into);

}  // namespace ndif::spec::detail
