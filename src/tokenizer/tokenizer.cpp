#include "ndif_sweep/tokenizer/tokenizer.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <variant>

#include "bpe.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"
#include "normalized_string.hpp"
#include "regex.hpp"
#include "split_scanner.hpp"
#include "tokenizer_json.hpp"
#include "unicode.hpp"

namespace ndif::tokenizer {

using detail::ByteRange;
using detail::NormalizedString;
using detail::Regex;
using detail::SplitBehavior;
using json = nlohmann::json;

namespace {

// ---- pipeline stages -------------------------------------------------------------------------

struct UnicodeForm {
  detail::NormalForm form;
};
struct Prepend {
  std::string prefix;
};
struct Replace {
  Regex pattern;
  std::string content;
};
using Normalizer = std::variant<UnicodeForm, Prepend, Replace>;

struct SplitStep {
  Regex pattern;
  SplitBehavior behavior;
  bool invert;
};
struct ByteLevelStep {
  bool add_prefix_space;
  bool use_regex;
};
enum class PrependScheme { always, first, never };
struct MetaspaceStep {
  std::string replacement;
  Regex replacement_pattern;
  PrependScheme prepend_scheme;
  bool split;
};
using PreTokenizer = std::variant<SplitStep, ByteLevelStep, MetaspaceStep>;

struct AddedToken {
  std::int32_t id;
  std::string content;
  bool lstrip;
  bool rstrip;
  bool single_word;
};

// Leftmost-longest matching of added tokens, as the reference's Aho-Corasick automaton does.
class AddedTokenMatcher {
 public:
  void add(std::string_view content, std::size_t token) {
    if (content.empty()) return;
    std::size_t node = 0;
    for (const char byte : content) {
      auto& children = nodes_[node].children;
      const auto it = std::lower_bound(children.begin(), children.end(), byte,
                                       [](const auto& child, char b) { return child.first < b; });
      if (it != children.end() && it->first == byte) {
        node = it->second;
      } else {
        const std::size_t next = nodes_.size();
        children.insert(it, {byte, next});
        nodes_.emplace_back();
        node = next;
      }
    }
    nodes_[node].token = token;
  }
  [[nodiscard]] bool empty() const noexcept { return nodes_[0].children.empty(); }

  struct Match {
    std::size_t first;
    std::size_t last;
    std::size_t token;
  };
  [[nodiscard]] std::vector<Match> find_all(std::string_view text) const {
    std::vector<Match> matches;
    if (empty()) return matches;
    for (std::size_t start = 0; start < text.size();) {
      std::size_t node = 0;
      std::optional<Match> best;
      for (std::size_t at = start; at < text.size(); ++at) {
        const auto& children = nodes_[node].children;
        const auto it = std::lower_bound(children.begin(), children.end(), text[at],
                                         [](const auto& child, char b) { return child.first < b; });
        if (it == children.end() || it->first != text[at]) break;
        node = it->second;
        if (nodes_[node].token != npos) best = Match{start, at + 1, nodes_[node].token};
      }
      if (best) {
        matches.push_back(*best);
        start = best->last;
      } else {
        ++start;
      }
    }
    return matches;
  }

 private:
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  struct Node {
    std::vector<std::pair<char, std::size_t>> children;
    std::size_t token = npos;
  };
  std::vector<Node> nodes_{1};
};

struct TemplatePiece {
  bool is_sequence;  // the input sequence "A"; otherwise special token ids
  std::vector<std::int32_t> ids;
};

/// A split of the input: either text still to be tokenized, or tokens already found.
struct Split {
  NormalizedString text;
  std::vector<detail::WordToken> tokens;  // offsets are original bytes once set
  bool tokenized = false;
};

std::string type_of(const json& node, const std::string& where) {
  if (!node.is_object() || !node.contains("type") || !node["type"].is_string()) {
    throw InputError(where + " must be an object with a string \"type\"");
  }
  return node["type"].get<std::string>();
}

template <typename T>
T value_or(const json& node, const char* key, T fallback) {
  const auto it = node.find(key);
  if (it == node.end() || it->is_null()) return fallback;
  return it->get<T>();
}

Regex pattern_of(const json& node, const std::string& where) {
  if (!node.is_object()) throw InputError(where + " must be {\"String\": ...} or {\"Regex\": ...}");
  if (node.contains("String")) return Regex::literal(node["String"].get<std::string>(), where);
  if (node.contains("Regex")) return Regex(node["Regex"].get<std::string>(), where);
  throw InputError(where + " must be {\"String\": ...} or {\"Regex\": ...}");
}

// Rust's is_whitespace over the characters at the end / start of a byte range.
std::size_t whitespace_start_at_end(std::string_view text) {
  std::size_t start = text.size();
  while (start > 0) {
    std::size_t lead = start - 1;
    while (lead > 0 && (static_cast<unsigned char>(text[lead]) & 0xC0) == 0x80) --lead;
    if (!detail::is_whitespace(detail::decode_at(text, lead))) break;
    start = lead;
  }
  return start;
}
std::size_t whitespace_length_at_start(std::string_view text) {
  std::size_t at = 0;
  while (at < text.size() && detail::is_whitespace(detail::decode_at(text, at))) {
    at += detail::utf8_length(static_cast<unsigned char>(text[at]));
  }
  return at;
}
bool ends_with_word(std::string_view text) {
  if (text.empty()) return false;
  std::size_t lead = text.size() - 1;
  while (lead > 0 && (static_cast<unsigned char>(text[lead]) & 0xC0) == 0x80) --lead;
  return detail::is_alphanumeric(detail::decode_at(text, lead));
}
bool starts_with_word(std::string_view text) {
  return !text.empty() && detail::is_alphanumeric(detail::decode_at(text, 0));
}

}  // namespace

struct Tokenizer::Impl {
  std::string name;
  std::vector<AddedToken> added;
  AddedTokenMatcher raw_matcher;         // added tokens with normalized=false
  AddedTokenMatcher normalized_matcher;  // added tokens with normalized=true
  std::vector<Normalizer> normalizers;
  std::vector<PreTokenizer> pre_tokenizers;
  std::optional<detail::Bpe> model;
  std::vector<TemplatePiece> single_template;
  std::size_t vocab_size = 0;

  void load(detail::TokenizerDocument& document);
  void load_normalizer(const json& node, const std::string& where);
  void load_pre_tokenizer(const json& node, const std::string& where);
  void load_post_processor(const json& node, const std::string& where);
  void load_model(const json& node, std::optional<detail::Vocabulary>& vocab,
                  const std::optional<detail::TokenPairs>& merges);
  void load_added_tokens(const json& node);

  void split_added(std::vector<Split>& splits, const AddedTokenMatcher& matcher, bool normalize_first) const;
  void normalize(NormalizedString& text) const;
  void pre_tokenize(std::vector<Split>& splits) const;
  [[nodiscard]] std::string at(const std::string& key) const { return name + ": " + key; }
};

void Tokenizer::Impl::load_normalizer(const json& node, const std::string& where) {
  if (node.is_null()) return;
  const std::string type = type_of(node, where);
  if (type == "Sequence") {
    const auto& list = node.at("normalizers");
    for (std::size_t i = 0; i < list.size(); ++i)
      load_normalizer(list[i], where + ".normalizers[" + std::to_string(i) + "]");
  } else if (type == "NFC") {
    normalizers.emplace_back(UnicodeForm{detail::NormalForm::nfc});
  } else if (type == "NFD") {
    normalizers.emplace_back(UnicodeForm{detail::NormalForm::nfd});
  } else if (type == "NFKC") {
    normalizers.emplace_back(UnicodeForm{detail::NormalForm::nfkc});
  } else if (type == "NFKD") {
    normalizers.emplace_back(UnicodeForm{detail::NormalForm::nfkd});
  } else if (type == "Prepend") {
    normalizers.emplace_back(Prepend{node.at("prepend").get<std::string>()});
  } else if (type == "Replace") {
    normalizers.emplace_back(
        Replace{pattern_of(node.at("pattern"), where + ".pattern"), node.at("content").get<std::string>()});
  } else {
    throw InputError(where + ": normalizer type \"" + type + "\" is not supported");
  }
}

void Tokenizer::Impl::load_pre_tokenizer(const json& node, const std::string& where) {
  if (node.is_null()) return;
  const std::string type = type_of(node, where);
  if (type == "Sequence") {
    const auto& list = node.at("pretokenizers");
    for (std::size_t i = 0; i < list.size(); ++i)
      load_pre_tokenizer(list[i], where + ".pretokenizers[" + std::to_string(i) + "]");
  } else if (type == "Split") {
    const std::string behavior = node.at("behavior").get<std::string>();
    SplitBehavior parsed{};
    if (behavior == "Removed")
      parsed = SplitBehavior::removed;
    else if (behavior == "Isolated")
      parsed = SplitBehavior::isolated;
    else if (behavior == "MergedWithPrevious")
      parsed = SplitBehavior::merged_with_previous;
    else if (behavior == "MergedWithNext")
      parsed = SplitBehavior::merged_with_next;
    else if (behavior == "Contiguous")
      parsed = SplitBehavior::contiguous;
    else
      throw InputError(where + ".behavior: split behavior \"" + behavior + "\" is not supported");
    pre_tokenizers.emplace_back(SplitStep{pattern_of(node.at("pattern"), where + ".pattern"), parsed,
                                          value_or(node, "invert", false)});
  } else if (type == "ByteLevel") {
    pre_tokenizers.emplace_back(
        ByteLevelStep{value_or(node, "add_prefix_space", true), value_or(node, "use_regex", true)});
  } else if (type == "Metaspace") {
    const std::string replacement = value_or<std::string>(node, "replacement", "\xE2\x96\x81");
    PrependScheme scheme =
        value_or(node, "add_prefix_space", true) ? PrependScheme::always : PrependScheme::never;
    if (node.contains("prepend_scheme")) {
      const std::string value = node["prepend_scheme"].get<std::string>();
      if (value == "always")
        scheme = PrependScheme::always;
      else if (value == "first")
        scheme = PrependScheme::first;
      else if (value == "never")
        scheme = PrependScheme::never;
      else
        throw InputError(where + ".prepend_scheme: \"" + value + "\" is not one of always, first, never");
    }
    pre_tokenizers.emplace_back(MetaspaceStep{replacement, Regex::literal(replacement, where), scheme,
                                              value_or(node, "split", true)});
  } else {
    throw InputError(where + ": pre_tokenizer type \"" + type + "\" is not supported");
  }
}

void Tokenizer::Impl::load_post_processor(const json& node, const std::string& where) {
  if (node.is_null()) return;
  const std::string type = type_of(node, where);
  if (type == "Sequence") {
    const auto& list = node.at("processors");
    for (std::size_t i = 0; i < list.size(); ++i)
      load_post_processor(list[i], where + ".processors[" + std::to_string(i) + "]");
  } else if (type == "ByteLevel") {
    // Without trim_offsets this processor leaves a single sequence unchanged.
    if (value_or(node, "trim_offsets", false)) {
      throw InputError(where + ": post_processor ByteLevel with trim_offsets true is not supported");
    }
  } else if (type == "TemplateProcessing") {
    if (!single_template.empty()) throw InputError(where + ": a second TemplateProcessing is not supported");
    const auto& specials = node.at("special_tokens");
    for (const auto& piece : node.at("single")) {
      if (piece.contains("Sequence")) {
        if (piece["Sequence"].at("id").get<std::string>() != "A") {
          throw InputError(where + ".single: a single-sequence template may only use sequence \"A\"");
        }
        single_template.push_back({true, {}});
      } else if (piece.contains("SpecialToken")) {
        const std::string id = piece["SpecialToken"].at("id").get<std::string>();
        if (!specials.contains(id))
          throw InputError(where + ".special_tokens: \"" + id + "\" is used by the template but not defined");
        single_template.push_back({false, specials[id].at("ids").get<std::vector<std::int32_t>>()});
      } else {
        throw InputError(where + ".single: each piece must be a Sequence or a SpecialToken");
      }
    }
    if (std::none_of(single_template.begin(), single_template.end(),
                     [](const auto& p) { return p.is_sequence; })) {
      throw InputError(where + ".single: the template must contain the sequence \"A\"");
    }
  } else {
    throw InputError(where + ": post_processor type \"" + type + "\" is not supported");
  }
}

void Tokenizer::Impl::load_model(const json& node, std::optional<detail::Vocabulary>& vocab,
                                 const std::optional<detail::TokenPairs>& merges) {
  const std::string type = type_of(node, at("model"));
  if (type != "BPE")
    throw InputError(at("model") + ": model type \"" + type + "\" is not supported (only BPE)");
  if (node.contains("dropout") && !node["dropout"].is_null()) {
    throw InputError(at("model.dropout") + ": BPE dropout is not supported; set it to null");
  }
  detail::BpeOptions options;
  if (node.contains("unk_token") && !node["unk_token"].is_null())
    options.unk_token = node["unk_token"].get<std::string>();
  options.continuing_subword_prefix = value_or<std::string>(node, "continuing_subword_prefix", "");
  options.end_of_word_suffix = value_or<std::string>(node, "end_of_word_suffix", "");
  options.fuse_unk = value_or(node, "fuse_unk", false);
  options.byte_fallback = value_or(node, "byte_fallback", false);
  options.ignore_merges = value_or(node, "ignore_merges", false);

  if (!vocab) {
    throw InputError(at("model.vocab") +
                     (node.contains("vocab") ? " must be an object of token -> id" : " is missing"));
  }
  if (!merges) {
    throw InputError(at("model.merges") +
                     (node.contains("merges") ? " must be a list of merges" : " is missing"));
  }
  model.emplace(std::move(*vocab), *merges, std::move(options), name);
}

void Tokenizer::Impl::load_added_tokens(const json& node) {
  if (node.is_null()) return;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const auto& token = node[i];
    const std::string where = at("added_tokens[" + std::to_string(i) + "]");
    AddedToken added_token{token.at("id").get<std::int32_t>(), token.at("content").get<std::string>(),
                           value_or(token, "lstrip", false), value_or(token, "rstrip", false),
                           value_or(token, "single_word", false)};
    if (const auto id = model->vocab().find(added_token.content)) added_token.id = *id;
    const bool special = value_or(token, "special", false);
    const bool normalized = value_or(token, "normalized", !special);
    (normalized ? normalized_matcher : raw_matcher).add(added_token.content, added.size());
    added.push_back(std::move(added_token));
  }
}

void Tokenizer::Impl::load(detail::TokenizerDocument& document) {
  const json& root = document.root;
  if (!root.is_object()) throw InputError(name + ": a tokenizer.json must hold a JSON object");
  for (const char* key : {"truncation", "padding"}) {
    if (root.contains(key) && !root[key].is_null()) {
      throw InputError(at(key) + ": " + key + " is not supported; set it to null");
    }
  }
  if (!root.contains("model")) throw InputError(at("model") + " is missing");
  load_model(root["model"], document.vocab, document.merges);
  if (root.contains("added_tokens")) load_added_tokens(root["added_tokens"]);
  if (root.contains("normalizer")) load_normalizer(root["normalizer"], at("normalizer"));
  if (root.contains("pre_tokenizer")) load_pre_tokenizer(root["pre_tokenizer"], at("pre_tokenizer"));
  if (root.contains("post_processor")) load_post_processor(root["post_processor"], at("post_processor"));

  std::vector<std::int32_t> ids;
  ids.reserve(model->vocab().size() + added.size());
  model->vocab().for_each([&](std::string_view, std::int32_t id) { ids.push_back(id); });
  for (const auto& token : added) ids.push_back(token.id);
  std::sort(ids.begin(), ids.end());
  vocab_size = static_cast<std::size_t>(std::unique(ids.begin(), ids.end()) - ids.begin());
}

void Tokenizer::Impl::normalize(NormalizedString& text) const {
  for (const auto& normalizer : normalizers) {
    if (const auto* form = std::get_if<UnicodeForm>(&normalizer)) {
      if (!detail::is_normalization_stable(text.text(), form->form))
        text.transform(detail::normalize(text.text(), form->form));
    } else if (const auto* prepend = std::get_if<Prepend>(&normalizer)) {
      text.prepend(prepend->prefix);
    } else if (const auto* replace = std::get_if<Replace>(&normalizer)) {
      text.replace(replace->pattern, replace->content);
    }
  }
}

// Cuts every untokenized split at the added tokens found in it. lstrip/rstrip widen a match over
// neighbouring whitespace; single_word skips matches inside a word.
void Tokenizer::Impl::split_added(std::vector<Split>& splits, const AddedTokenMatcher& matcher,
                                  bool normalize_first) const {
  std::vector<Split> out;
  out.reserve(splits.size());
  for (auto& split : splits) {
    if (split.tokenized) {
      out.push_back(std::move(split));
      continue;
    }
    if (normalize_first) normalize(split.text);
    const std::string& text = split.text.text();
    std::size_t start_offset = 0;
    auto keep_text = [&](std::size_t first, std::size_t last) {
      if (first < last) out.push_back({split.text.slice(first, last), {}, false});
    };
    for (const auto& match : matcher.find_all(text)) {
      const AddedToken& token = added[match.token];
      std::size_t first = match.first;
      std::size_t last = match.last;
      if (token.single_word) {
        const bool space_before = first == 0 || !ends_with_word(std::string_view(text).substr(0, first));
        const bool space_after =
            last == text.size() || !starts_with_word(std::string_view(text).substr(last));
        if (!space_before || !space_after) continue;
      }
      if (token.lstrip)
        first = std::max(whitespace_start_at_end(std::string_view(text).substr(0, first)), start_offset);
      if (token.rstrip) last += whitespace_length_at_start(std::string_view(text).substr(last));
      if (first > start_offset) keep_text(start_offset, first);
      const ByteRange original = split.text.original_range(first, last);
      Split found{split.text.slice(first, last), {}, true};
      found.tokens.push_back({token.id, static_cast<std::uint32_t>(original.first),
                              static_cast<std::uint32_t>(original.second)});
      out.push_back(std::move(found));
      start_offset = last;
    }
    keep_text(start_offset, text.size());
  }
  splits = std::move(out);
}

void Tokenizer::Impl::pre_tokenize(std::vector<Split>& splits) const {
  for (const auto& step : pre_tokenizers) {
    std::vector<Split> out;
    out.reserve(splits.size());
    for (auto& split : splits) {
      if (split.tokenized) {
        out.push_back(std::move(split));
        continue;
      }
      auto emit = [&](NormalizedString piece) {
        if (!piece.empty()) out.push_back({std::move(piece), {}, false});
      };
      if (const auto* s = std::get_if<SplitStep>(&step)) {
        for (auto& piece : split.text.split(s->pattern, s->behavior, s->invert)) emit(std::move(piece));
      } else if (const auto* b = std::get_if<ByteLevelStep>(&step)) {
        // GPT-2's word pattern, which its scanner matches.
        static const Regex gpt2_words(std::string(detail::split_pattern(detail::SplitScanner::gpt2)),
                                      "ByteLevel pre-tokenizer");
        if (b->add_prefix_space && split.text.text().rfind(' ', 0) != 0) split.text.prepend(" ");
        if (b->use_regex) {
          for (auto& piece : split.text.split(gpt2_words, SplitBehavior::isolated, false)) {
            piece.to_byte_level();
            emit(std::move(piece));
          }
        } else {
          split.text.to_byte_level();
          emit(std::move(split.text));
        }
      } else if (const auto* m = std::get_if<MetaspaceStep>(&step)) {
        static const Regex space = Regex::literal(" ", "Metaspace pre-tokenizer");
        split.text.replace(space, m->replacement);
        const bool starts = split.text.text().rfind(m->replacement, 0) == 0;
        if (!starts && (m->prepend_scheme == PrependScheme::always ||
                        (m->prepend_scheme == PrependScheme::first && split.text.original_start() == 0))) {
          split.text.prepend(m->replacement);
        }
        if (m->split) {
          for (auto& piece : split.text.split(m->replacement_pattern, SplitBehavior::merged_with_next, false))
            emit(std::move(piece));
        } else {
          emit(std::move(split.text));
        }
      }
    }
    splits = std::move(out);
  }
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  return from_json(read_file(path, "tokenizer file"), path.string());
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& name) {
  auto impl = std::make_unique<Impl>();
  impl->name = name;
  auto document = detail::read_tokenizer_json(json_text, name);
  try {
    impl->load(document);
  } catch (const json::exception& e) {
    throw InputError(name + ": unexpected tokenizer.json structure: " + e.what());
  }
  return Tokenizer(std::move(impl));
}

std::size_t Tokenizer::vocab_size() const noexcept { return impl_->vocab_size; }

Encoding Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (const auto bad = first_invalid_utf8(text)) {
    throw InputError("text is not valid UTF-8 (byte " + std::to_string(*bad) + ")");
  }
  const Impl& impl = *impl_;
  std::vector<Split> splits;
  if (!text.empty()) splits.push_back({NormalizedString(text, 0, text.size()), {}, false});
  impl.split_added(splits, impl.raw_matcher, false);
  impl.split_added(splits, impl.normalized_matcher, true);
  impl.pre_tokenize(splits);

  Encoding sequence;
  std::vector<detail::WordToken> word;
  for (auto& split : splits) {
    if (!split.tokenized) {
      word.clear();
      impl.model->tokenize(split.text.text(), word);
      for (const auto& token : word) {
        const ByteRange original = split.text.original_range(token.first, token.last);
        split.tokens.push_back({token.id, static_cast<std::uint32_t>(original.first),
                                static_cast<std::uint32_t>(original.second)});
      }
    }
    for (const auto& token : split.tokens) {
      sequence.ids.push_back(token.id);
      sequence.offsets.emplace_back(token.first, token.last);
    }
  }

  // Byte offsets to code-point offsets of the input.
  std::vector<std::uint32_t> char_index(text.size() + 1, 0);
  std::uint32_t chars = 0;
  for (std::size_t at = 0; at < text.size(); ++at) {
    const bool lead = (static_cast<unsigned char>(text[at]) & 0xC0) != 0x80;
    char_index[at] = lead ? chars++ : chars - 1;
  }
  char_index[text.size()] = chars;
  for (auto& [first, last] : sequence.offsets) {
    first = char_index[std::min<std::size_t>(first, text.size())];
    last = char_index[std::min<std::size_t>(last, text.size())];
  }

  if (!add_special_tokens || impl.single_template.empty()) return sequence;
  Encoding out;
  for (const auto& piece : impl.single_template) {
    if (piece.is_sequence) {
      out.ids.insert(out.ids.end(), sequence.ids.begin(), sequence.ids.end());
      out.offsets.insert(out.offsets.end(), sequence.offsets.begin(), sequence.offsets.end());
    } else {
      out.ids.insert(out.ids.end(), piece.ids.begin(), piece.ids.end());
      out.offsets.insert(out.offsets.end(), piece.ids.size(), Offset{0, 0});
    }
  }
  return out;
}

}  // namespace ndif::tokenizer
