#include "ndif_sweep/local/graph.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <string_view>
#include <variant>

#include "ndif_sweep/core/error.hpp"

namespace ndif::local {
namespace {

using json = nlohmann::json;

[[noreturn]] void invalid(const std::string& why) {
  throw InputError(std::string(kInvalidRequestPrefix) + why);
}

constexpr std::string_view kGetitem = "_operator.getitem";
constexpr std::string_view kStack = "torch.stack";
constexpr std::string_view kCat = "torch.cat";
constexpr std::string_view kFetchAttr = "nnsight.util.fetch_attr";
constexpr std::string_view kProxyCall = "nnsight.tracing.graph.proxy.Proxy.call";
constexpr std::string_view kLock = "nnsight.tracing.protocols.lock.LockProtocol";
constexpr std::string_view kIntervention = "nnsight.intervention.protocols.intervention.InterventionProtocol";
constexpr std::string_view kTracer = "nnsight.intervention.contexts.interleaving.InterleavingTracer";

// ---------------------------------------------------------------------------------------------
// Tensors: a view (fixed indices and index lists per source dimension) over a source of values.

/// Where the elements of a float tensor come from, addressed by a full source index.
class Source {
 public:
  virtual ~Source() = default;
  [[nodiscard]] virtual std::size_t rank() const = 0;
  [[nodiscard]] virtual std::int64_t extent(std::size_t dim) const = 0;
  [[nodiscard]] virtual float at(const std::vector<std::int64_t>& index) const = 0;
};

/// One prompt of the batch: its left padding and prefix states.
struct BatchRow {
  std::int64_t padding = 0;
  std::vector<std::uint64_t> states;
};

/// The invokes concatenated and left-padded to the longest length S.
struct Batch {
  std::int64_t length = 0;
  std::vector<BatchRow> rows;
};

/// A module's hidden state (batch, S, H), computed element by element on demand.
class HiddenState final : public Source {
 public:
  HiddenState(const SyntheticModel& model, const Batch& batch, std::uint64_t code)
      : model_(model), batch_(batch), code_(code) {}
  [[nodiscard]] std::size_t rank() const override { return 3; }
  [[nodiscard]] std::int64_t extent(std::size_t dim) const override {
    if (dim == 0) {
      return static_cast<std::int64_t>(batch_.rows.size());
    }
    return dim == 1 ? batch_.length : model_.config().hidden;
  }
  [[nodiscard]] float at(const std::vector<std::int64_t>& index) const override {
    const BatchRow& row = batch_.rows[static_cast<std::size_t>(index[0])];
    if (index[1] < row.padding) {
      return 0.0F;
    }
    return model_.value(row.states[static_cast<std::size_t>(index[1] - row.padding)], code_,
                        static_cast<std::uint64_t>(index[2]));
  }

 private:
  const SyntheticModel& model_;
  const Batch& batch_;
  std::uint64_t code_;
};

/// Materialised values in row-major order.
class DenseValues final : public Source {
 public:
  DenseValues(std::vector<std::int64_t> shape, std::vector<float> values)
      : shape_(std::move(shape)), values_(std::move(values)) {}
  [[nodiscard]] std::size_t rank() const override { return shape_.size(); }
  [[nodiscard]] std::int64_t extent(std::size_t dim) const override { return shape_[dim]; }
  [[nodiscard]] float at(const std::vector<std::int64_t>& index) const override {
    std::int64_t flat = 0;
    for (std::size_t d = 0; d < shape_.size(); ++d) {
      flat = flat * shape_[d] + index[d];
    }
    return values_[static_cast<std::size_t>(flat)];
  }

 private:
  std::vector<std::int64_t> shape_;
  std::vector<float> values_;
};

/// One dimension of a view: which source dimension it walks and through which indices.
struct Axis {
  std::size_t source_dim = 0;
  std::vector<std::int64_t> indices;
};

/// A float tensor: a view over a source, then dtype conversions applied element-wise.
struct FloatTensor {
  std::shared_ptr<const Source> source;
  std::vector<std::int64_t> fixed;  ///< per source dim: the index it is pinned to, or -1
  std::vector<Axis> axes;           ///< the tensor's own dimensions, in order
  DType dtype = DType::float32;     ///< the dtype every element is currently held in

  [[nodiscard]] std::vector<std::int64_t> shape() const {
    std::vector<std::int64_t> out;
    out.reserve(axes.size());
    for (const Axis& axis : axes) {
      out.push_back(static_cast<std::int64_t>(axis.indices.size()));
    }
    return out;
  }
};

std::vector<std::int64_t> iota_indices(std::int64_t n) {
  std::vector<std::int64_t> indices(static_cast<std::size_t>(n));
  std::iota(indices.begin(), indices.end(), std::int64_t{0});
  return indices;
}

/// A view of the whole source.
FloatTensor whole(std::shared_ptr<const Source> source, DType dtype) {
  FloatTensor tensor;
  tensor.fixed.assign(source->rank(), -1);
  for (std::size_t d = 0; d < source->rank(); ++d) {
    tensor.axes.push_back(Axis{d, iota_indices(source->extent(d))});
  }
  tensor.source = std::move(source);
  tensor.dtype = dtype;
  return tensor;
}

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

/// The selected elements in row-major order; values are already held in `tensor.dtype`.
std::vector<float> materialise(const FloatTensor& tensor) {
  const auto shape = tensor.shape();
  const auto count = numel(shape);
  std::vector<float> values;
  values.reserve(static_cast<std::size_t>(count));
  std::vector<std::int64_t> source_index = tensor.fixed;
  std::vector<std::size_t> position(shape.size(), 0);
  for (std::int64_t n = 0; n < count; ++n) {
    for (std::size_t d = 0; d < tensor.axes.size(); ++d) {
      source_index[tensor.axes[d].source_dim] = tensor.axes[d].indices[position[d]];
    }
    values.push_back(tensor.source->at(source_index));
    for (std::size_t d = shape.size(); d-- > 0;) {
      if (++position[d] < static_cast<std::size_t>(shape[d])) {
        break;
      }
      position[d] = 0;
    }
  }
  return values;
}

FloatTensor dense(std::vector<std::int64_t> shape, std::vector<float> values, DType dtype) {
  return whole(std::make_shared<DenseValues>(std::move(shape), std::move(values)), dtype);
}

/// An integer tensor literal (token ids, attention masks, index tensors).
struct IntTensor {
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> values;
};

// ---------------------------------------------------------------------------------------------
// Interpreter values.

struct Slice {
  std::optional<std::int64_t> start, stop, step;
};
struct Ellipsis {};
struct Val;
struct ListVal {
  std::vector<Val> items;
};
struct TupleVal {
  std::vector<Val> items;
};
struct DictVal {
  std::vector<std::pair<std::string, Val>> items;
};
/// A bound tensor method from fetch_attr, waiting for Proxy.call.
struct Method {
  std::shared_ptr<const FloatTensor> self;
  std::string name;
};
/// A graph (INTERVENTIONGRAPH / SUBGRAPH) argument of the tracer; its nodes run in order anyway.
struct SubGraph {};

struct Val {
  std::variant<std::monostate, bool, std::int64_t, double, std::string, Slice, Ellipsis, ListVal, TupleVal,
               DictVal, FloatTensor, IntTensor, Method, SubGraph>
      v;
};

const char* kind_name(const Val& value) {
  constexpr const char* names[] = {"None", "bool",  "int",  "float",  "str",    "slice",  "Ellipsis",
                                   "list", "tuple", "dict", "Tensor", "Tensor", "method", "graph"};
  return names[value.v.index()];
}

// ---------------------------------------------------------------------------------------------
// Indexing with Python / numpy rules.

std::int64_t normalise_index(std::int64_t index, std::int64_t size, std::size_t dim) {
  const std::int64_t resolved = index < 0 ? index + size : index;
  if (resolved < 0 || resolved >= size) {
    invalid("index " + std::to_string(index) + " is out of range for dimension " + std::to_string(dim) +
            " of size " + std::to_string(size));
  }
  return resolved;
}

/// The positions a Python slice selects in a sequence of `size` elements.
std::vector<std::int64_t> slice_positions(const Slice& slice, std::int64_t size) {
  const std::int64_t step = slice.step.value_or(1);
  if (step == 0) {
    invalid("slice step cannot be zero");
  }
  auto clamp = [&](std::optional<std::int64_t> bound, std::int64_t fallback) {
    if (!bound) {
      return fallback;
    }
    std::int64_t b = *bound < 0 ? *bound + size : *bound;
    return step > 0 ? std::clamp<std::int64_t>(b, 0, size) : std::clamp<std::int64_t>(b, -1, size - 1);
  };
  const std::int64_t start = clamp(slice.start, step > 0 ? 0 : size - 1);
  const std::int64_t stop = clamp(slice.stop, step > 0 ? size : -1);
  std::vector<std::int64_t> positions;
  for (std::int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    positions.push_back(i);
  }
  return positions;
}

std::vector<std::int64_t> int_list(const Val& value) {
  std::vector<std::int64_t> out;
  if (const auto* list = std::get_if<ListVal>(&value.v)) {
    for (const Val& item : list->items) {
      const auto* i = std::get_if<std::int64_t>(&item.v);
      if (i == nullptr) {
        invalid(std::string("a list index must hold integers, got ") + kind_name(item));
      }
      out.push_back(*i);
    }
  } else if (const auto* tensor = std::get_if<IntTensor>(&value.v)) {
    if (tensor->shape.size() != 1) {
      invalid("an index tensor must be one-dimensional, got shape " + shape_text(tensor->shape));
    }
    out = tensor->values;
  }
  return out;
}

FloatTensor index_tensor(const FloatTensor& tensor, const Val& key) {
  std::vector<const Val*> items;
  if (const auto* tuple = std::get_if<TupleVal>(&key.v)) {
    for (const Val& item : tuple->items) {
      items.push_back(&item);
    }
  } else {
    items.push_back(&key);
  }
  const auto ellipses = std::count_if(
      items.begin(), items.end(), [](const Val* item) { return std::holds_alternative<Ellipsis>(item->v); });
  if (ellipses > 1) {
    invalid("an index can only have a single ellipsis");
  }
  const std::size_t explicit_dims = items.size() - static_cast<std::size_t>(ellipses);
  if (explicit_dims > tensor.axes.size()) {
    invalid("too many indices for a tensor of shape " + shape_text(tensor.shape()) + ": " +
            std::to_string(explicit_dims) + " were indexed");
  }
  static const Val full_slice{Slice{}};
  std::vector<const Val*> expanded;
  for (const Val* item : items) {
    if (std::holds_alternative<Ellipsis>(item->v)) {
      expanded.insert(expanded.end(), tensor.axes.size() - explicit_dims, &full_slice);
    } else {
      expanded.push_back(item);
    }
  }
  expanded.resize(tensor.axes.size(), &full_slice);

  FloatTensor result;
  result.source = tensor.source;
  result.fixed = tensor.fixed;
  result.dtype = tensor.dtype;
  std::optional<std::size_t> list_axis;     // position of the list's axis in result.axes
  std::vector<std::size_t> advanced_items;  // key positions of ints and the list
  for (std::size_t d = 0; d < expanded.size(); ++d) {
    const Val& item = *expanded[d];
    const Axis& axis = tensor.axes[d];
    const auto size = static_cast<std::int64_t>(axis.indices.size());
    if (const auto* i = std::get_if<std::int64_t>(&item.v)) {
      result.fixed[axis.source_dim] = axis.indices[static_cast<std::size_t>(normalise_index(*i, size, d))];
      advanced_items.push_back(d);
    } else if (const auto* slice = std::get_if<Slice>(&item.v)) {
      Axis sliced{axis.source_dim, {}};
      for (const std::int64_t p : slice_positions(*slice, size)) {
        sliced.indices.push_back(axis.indices[static_cast<std::size_t>(p)]);
      }
      result.axes.push_back(std::move(sliced));
    } else if (std::holds_alternative<ListVal>(item.v) || std::holds_alternative<IntTensor>(item.v)) {
      if (list_axis) {
        invalid("indexing with more than one list is not supported by ndif-local");
      }
      Axis picked{axis.source_dim, {}};
      for (const std::int64_t p : int_list(item)) {
        picked.indices.push_back(axis.indices[static_cast<std::size_t>(normalise_index(p, size, d))]);
      }
      list_axis = result.axes.size();
      result.axes.push_back(std::move(picked));
      advanced_items.push_back(d);
    } else {
      invalid(std::string("a tensor cannot be indexed with ") + kind_name(item));
    }
  }
  // numpy: with a list present, ints are advanced indices too; when they are not all adjacent the
  // broadcast dimension goes first, otherwise it stays where the block of advanced indices was.
  if (list_axis && advanced_items.back() - advanced_items.front() + 1 != advanced_items.size()) {
    std::rotate(result.axes.begin(), result.axes.begin() + static_cast<std::ptrdiff_t>(*list_axis),
                result.axes.begin() + static_cast<std::ptrdiff_t>(*list_axis) + 1);
  }
  return result;
}

Val index_sequence(const std::vector<Val>& items, const Val& key, bool is_tuple) {
  const auto size = static_cast<std::int64_t>(items.size());
  if (const auto* i = std::get_if<std::int64_t>(&key.v)) {
    const std::int64_t resolved = *i < 0 ? *i + size : *i;
    if (resolved < 0 || resolved >= size) {
      invalid(std::string(is_tuple ? "tuple" : "list") + " index " + std::to_string(*i) +
              " out of range: the module output has " + std::to_string(size) + " element(s)");
    }
    return items[static_cast<std::size_t>(resolved)];
  }
  if (const auto* slice = std::get_if<Slice>(&key.v)) {
    std::vector<Val> picked;
    for (const std::int64_t p : slice_positions(*slice, size)) {
      picked.push_back(items[static_cast<std::size_t>(p)]);
    }
    return is_tuple ? Val{TupleVal{std::move(picked)}} : Val{ListVal{std::move(picked)}};
  }
  invalid(std::string(is_tuple ? "a tuple" : "a list") + " cannot be indexed with " + kind_name(key));
}

Val getitem(const Val& value, const Val& key) {
  if (const auto* tensor = std::get_if<FloatTensor>(&value.v)) {
    return Val{index_tensor(*tensor, key)};
  }
  if (const auto* tuple = std::get_if<TupleVal>(&value.v)) {
    return index_sequence(tuple->items, key, true);
  }
  if (const auto* list = std::get_if<ListVal>(&value.v)) {
    return index_sequence(list->items, key, false);
  }
  if (const auto* dict = std::get_if<DictVal>(&value.v)) {
    if (const auto* name = std::get_if<std::string>(&key.v)) {
      for (const auto& [k, v] : dict->items) {
        if (k == *name) {
          return v;
        }
      }
      invalid("key \"" + *name + "\" is not in the dict");
    }
  }
  invalid(std::string("getitem is not supported on ") + kind_name(value));
}

// ---------------------------------------------------------------------------------------------
// torch functions.

/// torch's type promotion among the float dtypes a sweep uses.
DType promote(DType a, DType b) { return a == b ? a : DType::float32; }

Val join(const std::vector<Val>& args, const std::vector<std::pair<std::string, Val>>& kwargs, bool stack) {
  const char* name = stack ? "torch.stack" : "torch.cat";
  if (args.empty() || !std::holds_alternative<ListVal>(args[0].v)) {
    if (args.empty() || !std::holds_alternative<TupleVal>(args[0].v)) {
      invalid(std::string(name) + " needs a list of tensors as its first argument");
    }
  }
  const auto& items = std::holds_alternative<ListVal>(args[0].v) ? std::get<ListVal>(args[0].v).items
                                                                 : std::get<TupleVal>(args[0].v).items;
  std::int64_t dim = 0;
  const Val* dim_value = args.size() > 1 ? &args[1] : nullptr;
  for (const auto& [key, value] : kwargs) {
    if (key != "dim") {
      invalid(std::string(name) + " got an unsupported keyword argument \"" + key + "\"");
    }
    dim_value = &value;
  }
  if (dim_value != nullptr) {
    const auto* d = std::get_if<std::int64_t>(&dim_value->v);
    if (d == nullptr) {
      invalid(std::string(name) + ": dim must be an integer");
    }
    dim = *d;
  }
  if (items.empty()) {
    invalid(std::string(name) + " expects a non-empty list of tensors");
  }
  std::vector<std::vector<float>> parts;
  std::vector<std::vector<std::int64_t>> shapes;
  DType dtype = DType::float32;
  for (std::size_t k = 0; k < items.size(); ++k) {
    const auto* tensor = std::get_if<FloatTensor>(&items[k].v);
    if (tensor == nullptr) {
      invalid(std::string(name) + ": element " + std::to_string(k) + " is a " + kind_name(items[k]) +
              ", not a tensor");
    }
    dtype = k == 0 ? tensor->dtype : promote(dtype, tensor->dtype);
    shapes.push_back(tensor->shape());
    parts.push_back(materialise(*tensor));
  }
  const auto& first = shapes[0];
  const auto rank = static_cast<std::int64_t>(first.size());
  const std::int64_t limit = stack ? rank + 1 : rank;
  if (dim < -limit || dim >= limit || limit == 0) {
    invalid(std::string(name) + ": dim " + std::to_string(dim) + " is out of range for tensors of shape " +
            shape_text(first));
  }
  const auto axis = static_cast<std::size_t>(dim < 0 ? dim + limit : dim);
  std::vector<std::int64_t> out_shape = first;
  for (std::size_t k = 1; k < shapes.size(); ++k) {
    bool same = shapes[k].size() == first.size();
    for (std::size_t d = 0; same && d < first.size(); ++d) {
      same = shapes[k][d] == first[d] || (!stack && d == axis);
    }
    if (!same) {
      invalid(std::string(name) + ": tensor " + std::to_string(k) + " has shape " + shape_text(shapes[k]) +
              " but tensor 0 has shape " + shape_text(first));
    }
    if (!stack) {
      out_shape[axis] += shapes[k][axis];
    }
  }
  if (stack) {
    out_shape.insert(out_shape.begin() + static_cast<std::ptrdiff_t>(axis),
                     static_cast<std::int64_t>(items.size()));
  }
  const std::int64_t outer = numel({first.begin(), first.begin() + static_cast<std::ptrdiff_t>(axis)});
  std::vector<float> values;
  values.reserve(static_cast<std::size_t>(numel(out_shape)));
  for (std::int64_t o = 0; o < outer; ++o) {
    for (std::size_t k = 0; k < parts.size(); ++k) {
      // Each part contributes one contiguous block per outer index; its values are rounded to
      // the promoted dtype, which is exact when the dtypes agree.
      const auto block = static_cast<std::int64_t>(parts[k].size()) / std::max<std::int64_t>(outer, 1);
      const auto begin = parts[k].begin() + static_cast<std::ptrdiff_t>(o * block);
      for (auto it = begin; it != begin + static_cast<std::ptrdiff_t>(block); ++it) {
        values.push_back(round_to(dtype, *it));
      }
    }
  }
  return Val{dense(std::move(out_shape), std::move(values), dtype)};
}

Val convert(const FloatTensor& tensor, const std::string& method) {
  DType target = DType::float32;
  if (method == "half") {
    target = DType::float16;
  } else if (method == "bfloat16") {
    target = DType::bfloat16;
  } else if (method != "float") {
    invalid("tensor method \"" + method + "\" is not supported (use half, bfloat16 or float)");
  }
  // Conversion is element-wise, so it is applied to the selected elements only.
  auto values = materialise(tensor);
  for (float& value : values) {
    value = round_to(target, value);
  }
  return Val{dense(tensor.shape(), std::move(values), target)};
}

// ---------------------------------------------------------------------------------------------
// JSON decoding.

std::vector<std::int64_t> tensor_shape(const json& values) {
  std::vector<std::int64_t> shape;
  const json* level = &values;
  while (level->is_array()) {
    shape.push_back(static_cast<std::int64_t>(level->size()));
    if (level->empty()) {
      break;
    }
    level = &(*level)[0];
  }
  return shape;
}

template <typename T>
void flatten(const json& values, const std::vector<std::int64_t>& shape, std::size_t dim,
             std::vector<T>& out) {
  if (dim == shape.size()) {
    if (!values.is_number() && !values.is_boolean()) {
      invalid("a TENSOR's values must be numbers in nested lists");
    }
    out.push_back(values.get<T>());
    return;
  }
  if (!values.is_array() || static_cast<std::int64_t>(values.size()) != shape[dim]) {
    invalid("a TENSOR's nested lists are ragged; expected shape " + shape_text(shape));
  }
  for (const json& item : values) {
    flatten(item, shape, dim + 1, out);
  }
}

Val tensor_literal(const json& node) {
  const json& values = node.at("values");
  const std::string dtype = node.at("dtype").get<std::string>();
  const auto shape = tensor_shape(values);
  if (dtype == "int64" || dtype == "int32" || dtype == "int16" || dtype == "int8" || dtype == "uint8" ||
      dtype == "bool") {
    IntTensor tensor{shape, {}};
    flatten(values, shape, 0, tensor.values);
    return Val{std::move(tensor)};
  }
  DType held;
  if (dtype == "float32") {
    held = DType::float32;
  } else if (dtype == "float16") {
    held = DType::float16;
  } else if (dtype == "bfloat16") {
    held = DType::bfloat16;
  } else {
    invalid("TENSOR dtype \"" + dtype + "\" is not supported");
  }
  std::vector<float> flat;
  flatten(values, shape, 0, flat);
  for (float& value : flat) {
    value = round_to(held, value);
  }
  return Val{dense(shape, std::move(flat), held)};
}

std::string memo_key(const json& reference) {
  const json& id = reference.at("id");
  return id.is_string() ? id.get<std::string>() : id.dump();
}

const std::string& type_name(const json& value) {
  static const std::string none;
  if (!value.is_object()) {
    return none;
  }
  const auto it = value.find("type_name");
  return it != value.end() && it->is_string() ? it->get_ref<const std::string&>() : none;
}

/// Follows REFERENCEs to the memoized object they stand for.
const json& deref(const json& memo, const json& value) {
  const json* current = &value;
  for (int hops = 0; type_name(*current) == "REFERENCE"; ++hops) {
    const auto key = memo_key(*current);
    const auto it = memo.find(key);
    if (it == memo.end() || hops > 64) {
      throw InputError("REFERENCE " + key + " is not in the request's memo");
    }
    current = &*it;
  }
  return *current;
}

std::string function_name(const json& memo, const json& node) {
  const json& target = deref(memo, node.at("target"));
  if (type_name(target) != "FUNCTION" || !target.contains("function_name") ||
      !target["function_name"].is_string()) {
    throw InputError("a NODE's target must be a FUNCTION with a function_name");
  }
  return target["function_name"].get<std::string>();
}

// ---------------------------------------------------------------------------------------------
// Running a graph.

class Interpreter {
 public:
  Interpreter(const RequestGraph& request, const SyntheticModel& model)
      : request_(request), model_(model), values_(request.nodes.size()) {}

  torchsave::Value run() {
    if (request_.nodes.empty() || function_name(request_.memo, request_.nodes.back()) != kTracer) {
      invalid("the last node must be the InterleavingTracer (" + std::string(kTracer) + ")");
    }
    read_invokes(request_.nodes.back());
    std::vector<std::size_t> saved;
    for (std::size_t i = 0; i + 1 < request_.nodes.size(); ++i) {
      const json& node = request_.nodes[i];
      const std::string name = function_name(request_.memo, node);
      current_node_ = i;
      if (name == kLock) {
        const auto args = node.value("args", json::array());
        if (args.size() != 1 || !referenced_node(args[0])) {
          invalid("node " + std::to_string(i) + ": LockProtocol takes exactly one node reference");
        }
        const std::size_t target = *referenced_node(args[0]);
        values_[i] = decode(args[0]);
        if (std::find(saved.begin(), saved.end(), target) == saved.end()) {
          saved.push_back(target);
        }
        continue;
      }
      values_[i] = call(name, node);
    }
    std::sort(saved.begin(), saved.end());
    torchsave::Dict result;
    for (const std::size_t index : saved) {
      result.items.emplace_back(torchsave::Value{static_cast<std::int64_t>(index)},
                                to_torch(*values_[index]));
    }
    return torchsave::Value{std::move(result)};
  }

 private:
  std::optional<std::size_t> referenced_node(const json& value) const {
    if (type_name(value) != "REFERENCE") {
      return std::nullopt;
    }
    const auto it = request_.node_index.find(memo_key(value));
    if (it == request_.node_index.end()) {
      return std::nullopt;
    }
    return it->second;
  }

  Val decode(const json& value) {
    if (auto node = referenced_node(value)) {
      if (!values_[*node]) {
        invalid("node " + std::to_string(current_node_) + " uses node " + std::to_string(*node) +
                ", which has not run yet");
      }
      return *values_[*node];
    }
    const json& v = deref(request_.memo, value);
    if (v.is_null()) {
      return Val{};
    }
    if (v.is_boolean()) {
      return Val{v.get<bool>()};
    }
    if (v.is_number_integer()) {
      return Val{v.get<std::int64_t>()};
    }
    if (v.is_number()) {
      return Val{v.get<double>()};
    }
    if (v.is_string()) {
      return Val{v.get<std::string>()};
    }
    const std::string& type = type_name(v);
    if (type == "LIST" || type == "TUPLE") {
      std::vector<Val> items;
      for (const json& item : v.at("values")) {
        items.push_back(decode(item));
      }
      return type == "LIST" ? Val{ListVal{std::move(items)}} : Val{TupleVal{std::move(items)}};
    }
    if (type == "DICT") {
      DictVal dict;
      for (const auto& [key, item] : v.at("values").items()) {
        dict.items.emplace_back(key, decode(item));
      }
      return Val{std::move(dict)};
    }
    if (type == "SLICE") {
      auto bound = [&](const char* field) -> std::optional<std::int64_t> {
        const Val b = v.contains(field) ? decode(v[field]) : Val{};
        if (std::holds_alternative<std::monostate>(b.v)) {
          return std::nullopt;
        }
        if (const auto* i = std::get_if<std::int64_t>(&b.v)) {
          return *i;
        }
        invalid(std::string("slice ") + field + " must be an integer or null");
      };
      return Val{Slice{bound("start"), bound("stop"), bound("step")}};
    }
    if (type == "ELLIPSIS") {
      return Val{Ellipsis{}};
    }
    if (type == "TENSOR") {
      return tensor_literal(v);
    }
    if (type == "INTERVENTIONGRAPH" || type == "SUBGRAPH") {
      return Val{SubGraph{}};
    }
    invalid("node " + std::to_string(current_node_) + ": value of type \"" + type + "\" is not supported");
  }

  void read_invokes(const json& tracer) {
    const auto args = tracer.value("args", json::array());
    if (args.size() < 3) {
      invalid("the InterleavingTracer has no invokes: its args must be [graph, null, inputs...]");
    }
    std::vector<std::vector<std::int64_t>> prompts;
    for (std::size_t k = 2; k < args.size(); ++k) {
      prompts.push_back(invoke_tokens(decode(args[k]), k - 2));
    }
    for (const auto& tokens : prompts) {
      batch_.length = std::max(batch_.length, static_cast<std::int64_t>(tokens.size()));
    }
    for (const auto& tokens : prompts) {
      batch_.rows.push_back(BatchRow{batch_.length - static_cast<std::int64_t>(tokens.size()),
                                     prefix_states(tokens, model_.config().seed)});
    }
  }

  static std::vector<std::int64_t> invoke_tokens(const Val& inputs, std::size_t invoke) {
    const std::string where = "invoke " + std::to_string(invoke) + ": ";
    const auto* outer = std::get_if<TupleVal>(&inputs.v);
    const TupleVal* args =
        outer && !outer->items.empty() ? std::get_if<TupleVal>(&outer->items[0].v) : nullptr;
    const DictVal* dict = args && !args->items.empty() ? std::get_if<DictVal>(&args->items[0].v) : nullptr;
    if (dict == nullptr) {
      invalid(where + "inputs must be TUPLE[TUPLE[DICT{\"input_ids\", \"attention_mask\"}], DICT]");
    }
    const IntTensor* ids = nullptr;
    const IntTensor* mask = nullptr;
    for (const auto& [key, value] : dict->items) {
      if (key == "input_ids") {
        ids = std::get_if<IntTensor>(&value.v);
      } else if (key == "attention_mask") {
        mask = std::get_if<IntTensor>(&value.v);
      }
    }
    if (ids == nullptr || ids->shape.size() != 2 || ids->shape[0] != 1 || ids->shape[1] == 0) {
      invalid(where + "\"input_ids\" must be an int64 TENSOR of shape (1, n) with n > 0");
    }
    if (mask != nullptr &&
        (mask->shape != ids->shape ||
         std::any_of(mask->values.begin(), mask->values.end(), [](std::int64_t m) { return m != 1; }))) {
      invalid(where +
              "\"attention_mask\" must be all ones of the shape of \"input_ids\" "
              "(send each prompt unpadded; the server pads)");
    }
    for (const std::int64_t id : ids->values) {
      if (id < 0) {
        invalid(where + "token id " + std::to_string(id) + " is negative");
      }
    }
    return ids->values;
  }

  Val call(const std::string& name, const json& node) {
    std::vector<Val> args;
    for (const json& arg : node.value("args", json::array())) {
      args.push_back(decode(arg));
    }
    std::vector<std::pair<std::string, Val>> kwargs;
    const json kwarg_values = node.value("kwargs", json::object());
    for (const auto& [key, value] : kwarg_values.items()) {
      kwargs.emplace_back(key, decode(value));
    }
    const std::string at = "node " + std::to_string(current_node_) + ": ";
    if (name == kIntervention) {
      return module_output(args);
    }
    if (name == kGetitem) {
      if (args.size() != 2) {
        invalid(at + "getitem takes [value, key]");
      }
      return getitem(args[0], args[1]);
    }
    if (name == kStack || name == kCat) {
      return join(args, kwargs, name == kStack);
    }
    if (name == kFetchAttr) {
      const auto* tensor = args.size() == 2 ? std::get_if<FloatTensor>(&args[0].v) : nullptr;
      const auto* attr = args.size() == 2 ? std::get_if<std::string>(&args[1].v) : nullptr;
      if (tensor == nullptr || attr == nullptr) {
        invalid(at + "fetch_attr takes [tensor, attribute name]");
      }
      if (*attr != "half" && *attr != "bfloat16" && *attr != "float") {
        invalid(at + "tensor attribute \"" + *attr + "\" is not supported (use half, bfloat16 or float)");
      }
      return Val{Method{std::make_shared<const FloatTensor>(*tensor), *attr}};
    }
    if (name == kProxyCall) {
      const auto* method = args.empty() ? nullptr : std::get_if<Method>(&args[0].v);
      if (method == nullptr || args.size() != 1 || !kwargs.empty()) {
        invalid(at + "Proxy.call takes one fetched tensor method and no arguments");
      }
      return convert(*method->self, method->name);
    }
    invalid(at + "unknown function \"" + name + "\"");
  }

  Val module_output(const std::vector<Val>& args) {
    const std::string at = "node " + std::to_string(current_node_) + ": ";
    const auto* path = args.size() == 3 ? std::get_if<std::string>(&args[0].v) : nullptr;
    const auto* invoke = args.size() == 3 ? std::get_if<std::int64_t>(&args[1].v) : nullptr;
    const auto* iteration = args.size() == 3 ? std::get_if<std::int64_t>(&args[2].v) : nullptr;
    if (path == nullptr || invoke == nullptr || iteration == nullptr) {
      invalid(at + "InterventionProtocol takes [\".module.path.output\", invoke_index, iteration]");
    }
    std::string_view p = *path;
    if (p.ends_with(".input")) {
      invalid(at + "module inputs are not supported, only outputs: \"" + *path + "\"");
    }
    if (!p.starts_with('.') || !p.ends_with(".output")) {
      invalid(at + "module access \"" + *path + "\" must look like \".model.layers.3.output\"");
    }
    const std::string module(p.substr(1, p.size() - 1 - std::string_view(".output").size()));
    const auto kind = model_.output_kind(module);
    if (!kind) {
      invalid("unknown module path \"" + module + "\" (the model has model.embed_tokens, model.layers.{0.." +
              std::to_string(model_.config().layers - 1) + "}[.self_attn|.mlp] and model.norm)");
    }
    if (*invoke < 0 || *invoke >= static_cast<std::int64_t>(batch_.rows.size())) {
      invalid(at + "invoke index " + std::to_string(*invoke) + " is out of range: the request has " +
              std::to_string(batch_.rows.size()) + " invoke(s)");
    }
    if (*iteration != 0) {
      invalid(at + "iteration " + std::to_string(*iteration) +
              " is not supported: a forward pass has only iteration 0");
    }
    auto source = std::make_shared<HiddenState>(model_, batch_, module_code(module));
    FloatTensor tensor = whole(std::move(source), model_.config().dtype);
    tensor.axes[0].indices = {*invoke};  // narrowed to this invoke, keeps the padded length
    if (*kind == OutputKind::tuple) {
      return Val{TupleVal{{Val{std::move(tensor)}}}};
    }
    return Val{std::move(tensor)};
  }

  torchsave::Value to_torch(const Val& value) const {
    return std::visit(
        [&](const auto& v) -> torchsave::Value {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::monostate>) {
            return torchsave::Value{torchsave::None{}};
          } else if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, std::int64_t> ||
                               std::is_same_v<T, double> || std::is_same_v<T, std::string>) {
            return torchsave::Value{v};
          } else if constexpr (std::is_same_v<T, ListVal>) {
            torchsave::List list;
            for (const Val& item : v.items) {
              list.push_back(to_torch(item));
            }
            return torchsave::Value{std::move(list)};
          } else if constexpr (std::is_same_v<T, TupleVal>) {
            torchsave::Tuple tuple;
            for (const Val& item : v.items) {
              tuple.items.push_back(to_torch(item));
            }
            return torchsave::Value{std::move(tuple)};
          } else if constexpr (std::is_same_v<T, DictVal>) {
            torchsave::Dict dict;
            for (const auto& [key, item] : v.items) {
              dict.items.emplace_back(torchsave::Value{key}, to_torch(item));
            }
            return torchsave::Value{std::move(dict)};
          } else if constexpr (std::is_same_v<T, FloatTensor>) {
            return torchsave::Value{encode(v)};
          } else if constexpr (std::is_same_v<T, IntTensor>) {
            std::vector<std::byte> bytes(v.values.size() * sizeof(std::int64_t));
            std::memcpy(bytes.data(), v.values.data(), bytes.size());
            return torchsave::Value{torchsave::Tensor::from_bytes(DType::int64, v.shape, std::move(bytes))};
          } else {
            invalid(std::string("a saved value cannot be a ") + kind_name(Val{v}));
          }
        },
        value.v);
  }

  static torchsave::Tensor encode(const FloatTensor& tensor) {
    const auto values = materialise(tensor);
    std::vector<std::byte> bytes(values.size() * element_size(tensor.dtype));
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (tensor.dtype == DType::float32) {
        std::memcpy(bytes.data() + 4 * i, &values[i], 4);
      } else {
        const std::uint16_t bits = tensor.dtype == DType::float16 ? float_to_half_bits(values[i])
                                                                  : float_to_bfloat16_bits(values[i]);
        bytes[2 * i] = static_cast<std::byte>(bits & 0xFFU);
        bytes[2 * i + 1] = static_cast<std::byte>(bits >> 8);
      }
    }
    return torchsave::Tensor::from_bytes(tensor.dtype, tensor.shape(), std::move(bytes));
  }

  const RequestGraph& request_;
  const SyntheticModel& model_;
  std::vector<std::optional<Val>> values_;
  Batch batch_;
  std::size_t current_node_ = 0;
};

}  // namespace

RequestGraph parse_request(const json& request) {
  if (!request.is_object() || !request.contains("graph") || !request.contains("memo")) {
    throw InputError("the request JSON must be an object {\"graph\": GRAPH, \"memo\": {...}}");
  }
  RequestGraph parsed;
  parsed.memo = request["memo"];
  if (!parsed.memo.is_object()) {
    throw InputError("\"memo\" must be an object mapping ids to values");
  }
  const json& graph = deref(parsed.memo, request["graph"]);
  if (type_name(graph) != "GRAPH" || !graph.contains("nodes") || !graph["nodes"].is_array()) {
    throw InputError("\"graph\" must be a GRAPH object with a \"nodes\" list");
  }
  for (const json& entry : graph["nodes"]) {
    const json& node = deref(parsed.memo, entry);
    if (type_name(node) != "NODE" || !node.contains("target")) {
      throw InputError("graph node " + std::to_string(parsed.nodes.size()) + " must be a NODE with a target");
    }
    for (const char* field : {"args", "kwargs"}) {
      if (node.contains(field) &&
          !(std::string_view(field) == "args" ? node[field].is_array() : node[field].is_object())) {
        throw InputError("graph node " + std::to_string(parsed.nodes.size()) + ": \"" + field +
                         "\" has the wrong JSON type");
      }
    }
    (void)function_name(parsed.memo, node);
    if (type_name(entry) == "REFERENCE") {
      parsed.node_index.emplace(memo_key(entry), parsed.nodes.size());
    }
    parsed.nodes.push_back(node);
  }
  if (parsed.nodes.empty()) {
    throw InputError("the graph has no nodes");
  }
  return parsed;
}

torchsave::Value run_request(const RequestGraph& request, const SyntheticModel& model) {
  try {
    return Interpreter(request, model).run();
  } catch (const json::exception& e) {
    invalid(std::string("malformed graph value: ") + e.what());
  }
}

}  // namespace ndif::local
