#include "tokenizer_json.hpp"

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "ndif_sweep/core/error.hpp"

namespace ndif::tokenizer::detail {

namespace {

using json = nlohmann::json;

// A SAX handler for nlohmann::json::sax_parse. It builds a tree for everything but model.vocab and
// model.merges, whose hundreds of thousands of entries would otherwise each become a tree node
// and a map node before being copied into the model's tables.
class DocumentReader {
 public:
  explicit DocumentReader(const std::string& name) : name_(name) {}

  TokenizerDocument take() { return std::move(document_); }

  bool null() { return value(json(nullptr), "null"); }
  bool boolean(bool v) { return value(json(v), "a boolean"); }
  bool number_integer(json::number_integer_t v) {
    if (section_ == Section::vocab)
      return vocab_id(v >= 0 && v <= std::numeric_limits<std::int32_t>::max(), v);
    return value(json(v), "a number");
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (section_ == Section::vocab) {
      return vocab_id(v <= static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max()),
                      static_cast<std::int64_t>(v));
    }
    return value(json(v), "a number");
  }
  bool number_float(json::number_float_t v, const std::string& /*text*/) {
    return value(json(v), "a number");
  }
  bool binary(json::binary_t& v) { return value(json::binary(std::move(v)), "binary data"); }

  bool string(std::string& v) {
    if (section_ == Section::merges) {
      const auto space = v.find(' ', 1);
      if (space == std::string::npos) {
        throw InputError(merge_where() + ": \"" + v + "\" is not two tokens separated by a space");
      }
      document_.merges->add(std::string_view(v).substr(0, space), std::string_view(v).substr(space + 1));
      return true;
    }
    if (section_ == Section::merge_pair) {
      if (pair_.size() == 2)
        throw InputError(merge_where() + " must be \"a b\" or [\"a\", \"b\"]: it has more than two tokens");
      pair_.push_back(v);
      return true;
    }
    return value(json(std::move(v)), "a string");
  }

  bool start_object(std::size_t /*elements*/) {
    if (std::exchange(pending_, Pending::none) == Pending::vocab) {
      if (document_.vocab) throw InputError(name_ + ": model.vocab appears twice");
      document_.vocab.emplace();
      section_ = Section::vocab;
      return true;
    }
    json* opened = open(json::object(), "an object");
    if (stack_.size() == 1 && key_ == "model") model_ = opened;
    stack_.push_back(opened);
    return true;
  }

  bool key(std::string& k) {
    if (section_ == Section::vocab) {
      token_.swap(k);
      return true;
    }
    if (stack_.size() == 2 && stack_.back() == model_) {
      if (k == "vocab")
        pending_ = Pending::vocab;
      else if (k == "merges")
        pending_ = Pending::merges;
    }
    key_.swap(k);
    return true;
  }

  bool end_object() {
    if (section_ == Section::vocab) {
      section_ = Section::tree;
      return true;
    }
    stack_.pop_back();
    return true;
  }

  bool start_array(std::size_t /*elements*/) {
    if (section_ == Section::merges) {
      section_ = Section::merge_pair;
      pair_.clear();
      return true;
    }
    if (std::exchange(pending_, Pending::none) == Pending::merges) {
      if (document_.merges) throw InputError(name_ + ": model.merges appears twice");
      document_.merges.emplace();
      section_ = Section::merges;
      return true;
    }
    stack_.push_back(open(json::array(), "an array"));
    return true;
  }

  bool end_array() {
    if (section_ == Section::merge_pair) {
      if (pair_.size() != 2)
        throw InputError(merge_where() + " must be \"a b\" or [\"a\", \"b\"]: it has fewer than two tokens");
      document_.merges->add(pair_[0], pair_[1]);
      section_ = Section::merges;
      return true;
    }
    if (section_ == Section::merges) {
      section_ = Section::tree;
      return true;
    }
    stack_.pop_back();
    return true;
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/, const json::exception& e) {
    throw InputError(name_ + ": not valid JSON: " + e.what());
  }

 private:
  enum class Section { tree, vocab, merges, merge_pair };
  enum class Pending { none, vocab, merges };

  [[nodiscard]] std::string merge_where() const {
    return name_ + ": model.merges[" + std::to_string(document_.merges->size()) + "]";
  }

  bool vocab_id(bool in_range, std::int64_t id) {
    if (!in_range) {
      throw InputError(name_ + ": model.vocab[\"" + token_ + "\"] = " + std::to_string(id) +
                       " is not an id in [0, 2^31)");
    }
    document_.vocab->assign(token_, static_cast<std::int32_t>(id));
    return true;
  }

  // A scalar: inside the vocabulary or merges it is a format error, elsewhere a tree node.
  bool value(json v, const char* what) {
    open(std::move(v), what);
    return true;
  }

  // Adds `v` to the tree under the current key or array, and returns where it now lives.
  json* open(json v, const char* what) {
    pending_ = Pending::none;
    switch (section_) {
      case Section::vocab:
        throw InputError(name_ + ": model.vocab[\"" + token_ + "\"] must be an integer id, not " + what);
      case Section::merges:
      case Section::merge_pair:
        throw InputError(merge_where() + " must be \"a b\" or [\"a\", \"b\"], not " + what);
      case Section::tree:
        break;
    }
    if (stack_.empty()) {
      document_.root = std::move(v);
      return &document_.root;
    }
    json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    // A repeated key keeps its last value, as nlohmann's own parser does.
    json& slot = parent[key_];
    slot = std::move(v);
    return &slot;
  }

  const std::string& name_;
  TokenizerDocument document_;
  std::vector<json*> stack_;  // the open objects and arrays of the tree; children never move while open
  json* model_ = nullptr;     // the root's "model" object
  std::string key_;
  std::string token_;
  std::vector<std::string> pair_;
  Section section_ = Section::tree;
  Pending pending_ = Pending::none;
};

}  // namespace

TokenizerDocument read_tokenizer_json(std::string_view text, const std::string& name) {
  DocumentReader reader(name);
  json::sax_parse(text.begin(), text.end(), &reader);
  return reader.take();
}

}  // namespace ndif::tokenizer::detail
