#include <fmt/format.h>

#include <bit>
#include <unordered_map>

#include "byte_io.hpp"
#include "ndif_sweep/core/error.hpp"
#include "pickle.hpp"
#include "tensor_view.hpp"

namespace ndif::torchsave::detail {
namespace {

// clang with libstdc++ cannot instantiate std::pair<Value, Value> (a Dict item) until Value's
// implicit default constructor is defined; odr-using it here, first, defines it.
[[maybe_unused]] Value complete_value() { return {}; }

// pickle's own batch size for APPENDS/SETITEMS; Python's unpickler accepts any, this matches it.
constexpr std::size_t kBatch = 1000;

class Pickler {
 public:
  Pickled run(const Value& value) {
    op(0x80);
    op(2);  // protocol 2, as torch.save writes by default
    write(value, 0);
    op('.');
    return {std::move(out_), std::move(storages_)};
  }

 private:
  void op(std::uint8_t b) { out_.push_back(static_cast<std::byte>(b)); }

  void write_int(std::int64_t v) {
    if (v >= 0 && v <= 0xFF) {
      op('K');
      put_le(out_, static_cast<std::uint64_t>(v), 1);
    } else if (v >= 0 && v <= 0xFFFF) {
      op('M');
      put_le(out_, static_cast<std::uint64_t>(v), 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      put_le(out_, static_cast<std::uint64_t>(v), 4);
    } else {
      // LONG1 with the fewest two's complement bytes that keep the sign, as Python emits.
      std::size_t n = 8;
      while (n > 1) {
        const std::int64_t shifted = v >> (8 * (n - 1) - 1);
        if (shifted != 0 && shifted != -1) break;
        --n;
      }
      op(0x8a);
      op(static_cast<std::uint8_t>(n));
      put_le(out_, static_cast<std::uint64_t>(v), n);
    }
  }

  void write_string(const std::string& s) {
    op('X');
    if (s.size() > 0xFFFFFFFFu) throw InternalError("torchsave: string longer than 4 GiB");
    put_le(out_, s.size(), 4);
    put_str(out_, s);
  }

  void write_global(std::string_view module, std::string_view name) {
    op('c');
    put_str(out_, module);
    op('\n');
    put_str(out_, name);
    op('\n');
  }

  void write_int_tuple(const std::vector<std::int64_t>& xs) {
    op('(');
    for (auto x : xs) write_int(x);
    op('t');
  }

  void write_tensor(const Tensor& t) {
    if (!t.storage) throw InternalError("torchsave: cannot save a tensor without storage");
    const std::size_t es = element_size(t.storage->dtype);
    if (t.storage->data().size() % es != 0)
      throw InternalError(fmt::format("torchsave: storage of {} bytes is not a whole number of {} elements",
                                      t.storage->data().size(), dtype_name(t.storage->dtype)));
    const auto storage_numel = static_cast<std::int64_t>(t.storage->data().size() / es);
    if (auto err = view_error(storage_numel, t.offset, t.shape, t.stride))
      throw InternalError(
          fmt::format("torchsave: cannot save a tensor whose view does not fit its storage: {}", *err));

    auto [it, fresh] = keys_.try_emplace(t.storage.get(), storages_.size());
    if (fresh) storages_.push_back(t.storage);

    write_global("torch._utils", "_rebuild_tensor_v2");
    op('(');
    op('(');  // persistent id ('storage', torch.XStorage, key, 'cpu', numel)
    write_string("storage");
    write_global("torch", storage_type_name(t.storage->dtype));
    write_string(std::to_string(it->second));
    write_string("cpu");
    write_int(storage_numel);
    op('t');
    op('Q');
    write_int(t.offset);
    write_int_tuple(t.shape);
    write_int_tuple(t.stride);
    op(0x89);  // requires_grad = False
    write_global("collections", "OrderedDict");
    op(')');
    op('R');  // backward_hooks = OrderedDict()
    op('t');
    op('R');
  }

  void write(const Value& value, int depth) {
    if (depth > kMaxDepth)
      throw InternalError(fmt::format("torchsave: values nest deeper than {} levels", kMaxDepth));
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, None>) {
            op('N');
          } else if constexpr (std::is_same_v<T, bool>) {
            op(x ? 0x88 : 0x89);
          } else if constexpr (std::is_same_v<T, std::int64_t>) {
            write_int(x);
          } else if constexpr (std::is_same_v<T, double>) {
            op('G');
            const auto bits = std::bit_cast<std::uint64_t>(x);
            for (int i = 7; i >= 0; --i) op(static_cast<std::uint8_t>(bits >> (8 * i)));
          } else if constexpr (std::is_same_v<T, std::string>) {
            write_string(x);
          } else if constexpr (std::is_same_v<T, Tensor>) {
            write_tensor(x);
          } else if constexpr (std::is_same_v<T, List>) {
            op(']');
            for (std::size_t i = 0; i < x.size(); i += kBatch) {
              op('(');
              for (std::size_t j = i; j < std::min(x.size(), i + kBatch); ++j) write(x[j], depth + 1);
              op('e');
            }
          } else if constexpr (std::is_same_v<T, Tuple>) {
            if (x.items.empty()) {
              op(')');
              return;
            }
            op('(');
            for (const auto& item : x.items) write(item, depth + 1);
            op('t');
          } else if constexpr (std::is_same_v<T, Dict>) {
            op('}');
            for (std::size_t i = 0; i < x.items.size(); i += kBatch) {
              op('(');
              for (std::size_t j = i; j < std::min(x.items.size(), i + kBatch); ++j) {
                write(x.items[j].first, depth + 1);
                write(x.items[j].second, depth + 1);
              }
              op('u');
            }
          }
        },
        value.v);
  }

  std::vector<std::byte> out_;
  std::vector<std::shared_ptr<const Storage>> storages_;
  std::unordered_map<const Storage*, std::size_t> keys_;
};

}  // namespace

Pickled pickle_value(const Value& value) { return Pickler().run(value); }

}  // namespace ndif::torchsave::detail
