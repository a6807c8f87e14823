#pragma once
/// \file
/// `ndif-sweep tokenize`: encodes one JSON string per input line with a tokenizer.json.

#include <filesystem>
#include <iosfwd>

namespace ndif::tokenizer {

/// Reads one JSON string per line of `in` and writes per line the ids as a JSON array, or with
/// `offsets` {"ids": [...], "offsets": [[start, end], ...]} (Unicode code points of the input).
/// With `special` the post-processor adds its special tokens (BOS etc.). Empty lines are skipped.
/// Returns 0. Throws InputError for an unreadable or unsupported tokenizer file, or for a line that
/// is not a JSON string or not valid UTF-8 (naming the line number, from 1).
int run_tokenize_command(const std::filesystem::path& tokenizer, bool special, bool offsets, std::istream& in,
                         std::ostream& out);

}  // namespace ndif::tokenizer
