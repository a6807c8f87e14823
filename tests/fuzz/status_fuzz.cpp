// libFuzzer target for what the ndif module reads from the network: a job status reply and a
// batch result file. Only DecodeError may escape; a crash, a sanitizer report or any other
// exception is a finding. Every decoded result is also checked against the shape it was decoded
// for, so a split that passed the checks but reads outside its tensor shows up under ASan.
// Good seeds: status replies of docs/protocol.md and tests/data/torchsave/*.pt.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/result.hpp"
#include "ndif_sweep/remote/retry.hpp"
#include "ndif_sweep/remote/status.hpp"

namespace {

void status_reply(std::string_view body) {
  try {
    const auto status = ndif::remote::parse_status(body);
    if (status.id.empty()) __builtin_trap();
    if (status.result_size && !status.result_url) __builtin_trap();
    if (status.finished() && status.state != ndif::remote::JobState::completed) {
      static_cast<void>(ndif::remote::classify_job_error(status.status, status.description));
    }
  } catch (const ndif::DecodeError&) {
    // a malformed reply
  }
}

void result_file(std::span<const std::byte> bytes, ndif::DType dtype) {
  ndif::remote::ExpectedResult expected;
  expected.saved_node = 0;
  expected.batch = 2;
  expected.probe_layers = {1, 2};
  expected.positions = 1;
  expected.hidden = 2;
  expected.dtype = dtype;
  const auto element = static_cast<std::size_t>(ndif::spec::dtype_bytes(dtype));
  try {
    const auto decoded = ndif::remote::decode_result({bytes.begin(), bytes.end()}, expected);
    if (decoded.probes.size() != 2 || decoded.probes[0].bytes.size() != 2 * 1 * 1 * 2 * element ||
        decoded.probes[1].bytes.size() != 2 * 2 * 1 * 2 * element || decoded.nonfinite < 0 ||
        decoded.nonfinite > 12) {
      __builtin_trap();
    }
  } catch (const ndif::DecodeError&) {
    // damaged, truncated or unexpected result
  }
  // One probe: its block views the tensor where it lies in the decoded file (no copy); reading all of
  // it must stay inside what the file owns.
  expected.probe_layers = {3};
  try {
    const auto decoded = ndif::remote::decode_result({bytes.begin(), bytes.end()}, expected);
    if (decoded.probes.size() != 1 || decoded.probes[0].bytes.size() != 2 * 3 * 1 * 2 * element)
      __builtin_trap();
    unsigned sum = 0;
    for (const std::byte b : decoded.probes[0].bytes) sum += static_cast<unsigned>(b);
    if (sum == 0xFFFFFFFFU) __builtin_trap();
  } catch (const ndif::DecodeError&) {
    // damaged, truncated or unexpected result
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  status_reply(text);
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  result_file(bytes, ndif::DType::float16);
  result_file(bytes, ndif::DType::float32);
  return 0;
}
