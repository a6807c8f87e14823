#pragma once
/// \file
/// The nnsight request encoder: each batch's G4 envelope, blob and headers built by the user's own
/// nnsight in an encoder process (python/ndif_sweep/encoder.py) that serves every rank of a node
/// over a Unix socket. This side starts that process when its node has none, talks to it in
/// frames (encoder_wire.hpp), and starts it again when it dies, hangs or answers garbage.
///
/// The process is started with posix_spawn (no shell, no fork of this process's memory: safe after
/// MPI_Init, also with InfiniBand transports), with no file descriptor of this process but three
/// pipes: its standard input, which only this process holds (the encoder exits when it reaches end
/// of file, so it never outlives the rank that started it), and its standard output and error,
/// whose lines reach this process's standard error with a prefix. The API key's variable is
/// removed from its environment; it never touches the network.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/encoder_wire.hpp"
#include "ndif_sweep/remote/request.hpp"
#include "ndif_sweep/spec/job_spec.hpp"

namespace ndif::remote {

/// Where and how this node's encoder runs.
struct EncoderOptions {
  std::string python = "python3";  ///< the interpreter: a name looked up on PATH, or a path
  /// A directory private to this run and node (created 0700 if missing) holding the socket and
  /// the lock that elects which rank starts the encoder; every rank of a node must use the same.
  std::filesystem::path node_dir;
  /// The directory that holds the `ndif_sweep` package, put first on the encoder's PYTHONPATH;
  /// empty when the interpreter has the package installed.
  std::filesystem::path package_dir;
  std::string scrub_env;  ///< an environment variable kept from the encoder (the API key's)
  std::chrono::milliseconds start_timeout{std::chrono::minutes(5)};    ///< start, hello and open
  std::chrono::milliseconds request_timeout{std::chrono::minutes(5)};  ///< one tokenize or encode
  int restarts = 3;  ///< times a failing encoder is started again for one request
};

/// What the encoder builds requests for.
struct EncoderJob {
  std::string model;  ///< repo id
  std::optional<std::string> revision;
  std::optional<std::string> model_dir;  ///< a local directory instead of the Hugging Face cache
  std::string model_key;                 ///< the envelope's key, as the server lists it
  std::vector<spec::Probe> probes;
  DType dtype = DType::float16;
};

/// One rank's encoder: a RequestEncoder whose bodies come from the node's encoder process. Not
/// thread-safe; not copyable.
class NnsightEncoder final : public RequestEncoder {
 public:
  NnsightEncoder(EncoderOptions options, EncoderJob job);
  /// Closes the connection; when this rank started the encoder, ends it and removes its socket.
  ~NnsightEncoder() override;
  NnsightEncoder(const NnsightEncoder&) = delete;
  NnsightEncoder& operator=(const NnsightEncoder&) = delete;

  /// Connects (starting the node's encoder when none answers) and asks for its versions. Throws
  /// InputError when the interpreter cannot be started, has no nnsight, or is not an encoder of
  /// this protocol version; EncoderFailure when it fails to answer.
  EncoderHello hello();
  /// Opens the job on the encoder: builds the meta skeleton and checks the probes. Throws
  /// InputError naming the probe, the module or the missing model files.
  EncoderModel open();
  /// The model's own Hugging Face tokenizer on `texts` (the tokenizer canary).
  std::vector<std::vector<std::int64_t>> tokenize(const std::vector<std::string>& texts,
                                                  bool add_special_tokens);
  /// One batch as a G4 request. Restarts a failing encoder up to `restarts` times; throws
  /// EncoderFailure when it keeps failing, InputError when it refuses the batch.
  [[nodiscard]] EncodedRequest encode(const BatchRequest& request) override;

  /// The model facts of the last open(); opens first when needed.
  const EncoderModel& model();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The directory holding the `ndif_sweep` package beside this build or installation: the
/// project's python/ directory when this binary runs from its build tree, or
/// <prefix>/share/ndif-sweep/python when installed; empty when neither exists.
[[nodiscard]] std::filesystem::path bundled_package_dir();

/// A PYTHONPATH with `package_dir` (when not empty) ahead of `existing`, so that the `ndif_sweep`
/// package that matches this binary is the one imported.
[[nodiscard]] std::string python_path_with(const std::filesystem::path& package_dir,
                                           std::string_view existing);

}  // namespace ndif::remote
