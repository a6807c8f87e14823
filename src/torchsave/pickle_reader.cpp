#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <variant>

#include "byte_io.hpp"
#include "ndif_sweep/core/error.hpp"
#include "pickle.hpp"
#include "tensor_view.hpp"

namespace ndif::torchsave::detail {

namespace {

constexpr std::pair<DType, const char*> kStorageTypes[] = {
    {DType::float16, "HalfStorage"},   {DType::bfloat16, "BFloat16Storage"}, {DType::float32, "FloatStorage"},
    {DType::float64, "DoubleStorage"}, {DType::int64, "LongStorage"},        {DType::int32, "IntStorage"},
    {DType::int16, "ShortStorage"},    {DType::int8, "CharStorage"},         {DType::uint8, "ByteStorage"},
    {DType::bool_, "BoolStorage"},
};

}  // namespace

const char* storage_type_name(DType dtype) noexcept {
  for (const auto& [d, name] : kStorageTypes)
    if (d == dtype) return name;
  return "UntypedStorage";
}

std::optional<DType> dtype_of_storage_type(std::string_view name) noexcept {
  for (const auto& [d, n] : kStorageTypes)
    if (name == n) return d;
  return std::nullopt;
}

namespace {

// During unpickling, objects live in an arena and refer to each other by index: pickle's memo
// gives shared (even cyclic) references, and later opcodes mutate objects already memoised.
using Ref = std::size_t;

enum class Callable { rebuild_tensor_v2, rebuild_parameter, ordered_dict, storage_type };
struct Global {
  Callable fn;
  DType dtype = DType::float32;  // for storage_type
};
struct StorageRef {
  std::shared_ptr<const Storage> storage;
};
struct ListObj {
  std::vector<Ref> items;
};
struct TupleObj {
  std::vector<Ref> items;
};
struct DictObj {
  std::vector<std::pair<Ref, Ref>> items;
};
struct Obj {
  std::variant<None, bool, std::int64_t, double, std::string, Tensor, ListObj, TupleObj, DictObj, Global,
               StorageRef>
      v;
};

class Unpickler {
 public:
  Unpickler(std::span<const std::byte> pickle, const StorageLoader& load_storage)
      : in_(pickle), load_storage_(load_storage) {}

  Value run() {
    while (true) {
      op_pos_ = pos_;
      const auto op = static_cast<std::uint8_t>(take(1)[0]);
      op_ = op;
      if (op == '.') break;
      step(op);
    }
    if (stack_.size() != 1 || !marks_.empty()) fail("STOP with a stack that does not hold exactly one value");
    if (pos_ != in_.size()) fail(fmt::format("{} bytes follow STOP", in_.size() - pos_));
    // Expanding shared references into a tree could grow exponentially; a legitimate file has
    // about one value per opcode, so a budget proportional to the input bounds the work.
    budget_ = 4 * in_.size() + 1024;
    return to_value(stack_.back(), 0);
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw DecodeError(fmt::format("torch.save data.pkl: opcode 0x{:02x} at byte {}: {}", op_, op_pos_, why));
  }

  std::span<const std::byte> take(std::size_t n) {
    if (n > in_.size() - pos_)
      throw DecodeError(fmt::format(
          "torch.save data.pkl: truncated at byte {} (opcode 0x{:02x} needs {} more bytes)", pos_, op_, n));
    auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::uint64_t take_le(std::size_t n) {
    auto s = take(n);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(s[i]) << (8 * i);
    return v;
  }
  std::string take_line() {
    const std::size_t start = pos_;
    while (pos_ < in_.size() && in_[pos_] != std::byte{'\n'}) ++pos_;
    if (pos_ == in_.size()) fail("GLOBAL name without a terminating newline");
    return to_string(in_.subspan(start, pos_++ - start));
  }

  Ref make(Obj obj) {
    arena_.push_back(std::move(obj));
    return arena_.size() - 1;
  }
  void push(Obj obj) { stack_.push_back(make(std::move(obj))); }
  Ref pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("stack underflow");
    Ref r = stack_.back();
    stack_.pop_back();
    return r;
  }
  Ref& top() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("stack underflow");
    return stack_.back();
  }
  std::vector<Ref> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Ref> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  template <typename T>
  T& as(Ref r, const char* what) {
    auto* p = std::get_if<T>(&arena_[r].v);
    if (!p) fail(fmt::format("expected {}", what));
    return *p;
  }

  void memo_put(std::uint64_t key) { memo_[key] = top(); }
  void memo_get(std::uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) fail(fmt::format("memo key {} was never stored", key));
    stack_.push_back(it->second);
  }

  void step(std::uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const auto proto = take_le(1);
        if (proto < 2 || proto > 5) fail(fmt::format("unsupported pickle protocol {}", proto));
        return;
      }
      case 0x95:
        (void)take_le(8);
        return;  // FRAME: framing only groups the opcodes that follow
      case '}':
        push({DictObj{}});
        return;
      case ']':
        push({ListObj{}});
        return;
      case ')':
        push({TupleObj{}});
        return;
      case '(':
        marks_.push_back(stack_.size());
        return;
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        const std::size_t n = op - 0x84u;
        TupleObj t;
        t.items.resize(n);
        for (std::size_t i = n; i-- > 0;) t.items[i] = pop();
        push({std::move(t)});
        return;
      }
      case 't':
        push({TupleObj{pop_mark()}});
        return;
      case 'l':
        push({ListObj{pop_mark()}});
        return;
      case 'a': {
        const Ref item = pop();
        as<ListObj>(top(), "a list to APPEND to").items.push_back(item);
        return;
      }
      case 'e': {
        auto items = pop_mark();
        auto& list = as<ListObj>(top(), "a list to APPENDS to").items;
        list.insert(list.end(), items.begin(), items.end());
        return;
      }
      case 's': {
        const Ref value = pop();
        const Ref key = pop();
        as<DictObj>(top(), "a dict to SETITEM in").items.emplace_back(key, value);
        return;
      }
      case 'u': {
        auto items = pop_mark();
        if (items.size() % 2 != 0) fail("SETITEMS with an odd number of items");
        auto& dict = as<DictObj>(top(), "a dict to SETITEMS in").items;
        for (std::size_t i = 0; i < items.size(); i += 2) dict.emplace_back(items[i], items[i + 1]);
        return;
      }
      case 'J':
        push({static_cast<std::int64_t>(static_cast<std::int32_t>(take_le(4)))});
        return;
      case 'K':
        push({static_cast<std::int64_t>(take_le(1))});
        return;
      case 'M':
        push({static_cast<std::int64_t>(take_le(2))});
        return;
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        const auto n = take_le(1);
        if (n > 8) fail(fmt::format("integer of {} bytes does not fit 64 bits", n));
        std::uint64_t v = take_le(n);
        if (n > 0 && n < 8 && (v >> (8 * n - 1)) != 0) v |= ~std::uint64_t{0} << (8 * n);
        push({static_cast<std::int64_t>(v)});
        return;
      }
      case 'G': {  // BINFLOAT is big-endian
        auto s = take(8);
        std::uint64_t bits = 0;
        for (std::size_t i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<std::uint64_t>(s[i]);
        push({std::bit_cast<double>(bits)});
        return;
      }
      case 'X':
        push({to_string(take(take_le(4)))});
        return;
      case 0x8c:
        push({to_string(take(take_le(1)))});
        return;
      case 0x8d:
        push({to_string(take(take_le(8)))});
        return;
      case 'N':
        push({None{}});
        return;
      case 0x88:
        push({true});
        return;
      case 0x89:
        push({false});
        return;
      case 'c': {
        auto module = take_line();
        auto name = take_line();
        push({resolve_global(module, name)});
        return;
      }
      case 'R': {
        const Ref args = pop();
        const Ref fn = pop();
        push(reduce(as<Global>(fn, "an allowed callable for REDUCE"),
                    as<TupleObj>(args, "an argument tuple").items));
        return;
      }
      case 'Q':
        push(persistent_load(as<TupleObj>(pop(), "a persistent id tuple").items));
        return;
      case 'q':
        memo_put(take_le(1));
        return;
      case 'r':
        memo_put(take_le(4));
        return;
      case 0x94:
        memo_put(memo_.size());
        return;  // MEMOIZE
      case 'h':
        memo_get(take_le(1));
        return;
      case 'j':
        memo_get(take_le(4));
        return;
      case 'b': {  // BUILD: only the (empty) state of an OrderedDict, which carries nothing we keep
        (void)pop();
        as<DictObj>(top(), "an OrderedDict to BUILD");
        return;
      }
      default:
        fail("opcode outside the torch.save subset this reader supports");
    }
  }

  Obj resolve_global(const std::string& module, const std::string& name) {
    if (module == "torch._utils" && name == "_rebuild_tensor_v2")
      return {Global{Callable::rebuild_tensor_v2}};
    if (module == "torch._utils" && name == "_rebuild_parameter")
      return {Global{Callable::rebuild_parameter}};
    if (module == "collections" && name == "OrderedDict") return {Global{Callable::ordered_dict}};
    if (module == "torch") {
      if (auto dtype = dtype_of_storage_type(name)) return {Global{Callable::storage_type, *dtype}};
    }
    fail(fmt::format("GLOBAL {}.{} is not in the allow-list of torch.save tensors and containers", module,
                     name));
  }

  std::int64_t int_arg(Ref r, const char* what) { return as<std::int64_t>(r, what); }

  std::vector<std::int64_t> int_tuple(Ref r, const char* what) {
    std::vector<std::int64_t> out;
    for (Ref item : as<TupleObj>(r, what).items) out.push_back(int_arg(item, what));
    return out;
  }

  Obj reduce(const Global& fn, const std::vector<Ref>& args) {
    switch (fn.fn) {
      case Callable::ordered_dict:
        if (!args.empty()) fail("OrderedDict with arguments");
        return {DictObj{}};
      case Callable::rebuild_parameter:
        if (args.size() != 3) fail(fmt::format("_rebuild_parameter takes 3 arguments, got {}", args.size()));
        return {as<Tensor>(args[0], "a tensor for _rebuild_parameter")};
      case Callable::rebuild_tensor_v2:
        return rebuild_tensor(args);
      case Callable::storage_type:
        break;
    }
    fail("a storage type is not callable");
  }

  Obj rebuild_tensor(const std::vector<Ref>& args) {
    if (args.size() != 6 && args.size() != 7)
      fail(fmt::format("_rebuild_tensor_v2 takes 6 or 7 arguments, got {}", args.size()));
    const auto& storage = as<StorageRef>(args[0], "a storage for _rebuild_tensor_v2").storage;
    Tensor t;
    t.offset = int_arg(args[1], "an integer storage offset");
    t.shape = int_tuple(args[2], "a tuple of integer sizes");
    t.stride = int_tuple(args[3], "a tuple of integer strides");
    as<bool>(args[4], "a bool requires_grad");
    const auto storage_numel =
        static_cast<std::int64_t>(storage->data().size() / element_size(storage->dtype));
    if (auto err = view_error(storage_numel, t.offset, t.shape, t.stride)) fail("bad tensor view: " + *err);
    t.storage = storage;
    return {std::move(t)};
  }

  Obj persistent_load(const std::vector<Ref>& pid) {
    if (pid.size() != 5) fail(fmt::format("persistent id has {} fields, expected 5", pid.size()));
    if (as<std::string>(pid[0], "\"storage\" in the persistent id") != "storage")
      fail("persistent id is not a storage");
    const auto& type = as<Global>(pid[1], "a storage type in the persistent id");
    if (type.fn != Callable::storage_type) fail("persistent id names no storage type");
    const auto& key = as<std::string>(pid[2], "a string key in the persistent id");
    as<std::string>(pid[3], "a string location in the persistent id");
    const auto numel = int_arg(pid[4], "an integer element count in the persistent id");
    if (numel < 0) fail(fmt::format("storage {} has negative element count {}", key, numel));
    auto [it, fresh] = storages_.try_emplace(key);
    if (fresh) {
      it->second = load_storage_(key, type.dtype, numel);
    } else if (it->second->dtype != type.dtype ||
               it->second->data().size() / element_size(type.dtype) != static_cast<std::uint64_t>(numel)) {
      fail(fmt::format("storage {} is named twice with different types or sizes", key));
    }
    return {StorageRef{it->second}};
  }

  Value to_value(Ref r, int depth) {
    if (depth > kMaxDepth)
      fail(fmt::format("values nest deeper than {} levels (or refer to themselves)", kMaxDepth));
    if (budget_ == 0) fail("shared references expand beyond the size the input can justify");
    --budget_;
    const Obj& obj = arena_[r];
    if (const auto* s = std::get_if<std::string>(&obj.v)) {
      if (s->size() > budget_) fail("shared references expand beyond the size the input can justify");
      budget_ -= s->size();
    }
    return std::visit(
        [&](const auto& x) -> Value {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, ListObj>) {
            List out;
            for (Ref item : x.items) out.push_back(to_value(item, depth + 1));
            return {std::move(out)};
          } else if constexpr (std::is_same_v<T, TupleObj>) {
            Tuple out;
            for (Ref item : x.items) out.items.push_back(to_value(item, depth + 1));
            return {std::move(out)};
          } else if constexpr (std::is_same_v<T, DictObj>) {
            Dict out;
            for (auto [k, v] : x.items)
              out.items.emplace_back(to_value(k, depth + 1), to_value(v, depth + 1));
            return {std::move(out)};
          } else if constexpr (std::is_same_v<T, Global> || std::is_same_v<T, StorageRef>) {
            fail("a callable or bare storage is left in the result");
          } else {
            return {x};
          }
        },
        obj.v);
  }

  std::span<const std::byte> in_;
  const StorageLoader& load_storage_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::uint8_t op_ = 0;
  std::deque<Obj> arena_;
  std::vector<Ref> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, Ref> memo_;
  std::unordered_map<std::string, std::shared_ptr<const Storage>> storages_;
  std::size_t budget_ = 0;
};

}  // namespace

Value unpickle(std::span<const std::byte> pickle, const StorageLoader& load_storage) {
  return Unpickler(pickle, load_storage).run();
}

}  // namespace ndif::torchsave::detail
