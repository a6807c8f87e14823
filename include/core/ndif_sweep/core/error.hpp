#pragma once
/// \file
/// The one error hierarchy of ndif-sweep. Every error type carries its exit code; `main()` of each
/// binary holds the only `catch` that turns them into exit codes (see README "Exit codes").

#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ndif {

/// Process exit codes of `ndif-sweep` (contract: README "Exit codes").
enum class ExitCode : int {
  ok = 0,
  failure = 1,          ///< an unexpected fault (storage I/O, internal error)
  invalid_input = 2,    ///< job spec, prompts, tokenizer file, flags, output path; nothing written
  incomplete = 3,       ///< stopped incomplete but resumable (retries exhausted, drained on signal)
  output_mismatch = 4,  ///< the output file is not this job's, not HDF5, or another run holds it
  refused = 5,          ///< the service refused the request itself (credentials, client version)
};

/// Base of every error thrown by ndif-sweep code.
class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& what) : std::runtime_error(what), code_(code) {}
  /// The exit code a binary returns when this error ends it.
  [[nodiscard]] ExitCode exit_code() const noexcept { return code_; }

 private:
  ExitCode code_;
};

/// A user-supplied file or flag is wrong. The message names the file, the line or key, and the fix.
class InputError : public Error {
 public:
  explicit InputError(const std::string& what) : Error(ExitCode::invalid_input, what) {}
};

/// The output file exists but belongs to another job or tool, is damaged, or is locked by a run.
class SpecMismatch : public Error {
 public:
  explicit SpecMismatch(const std::string& what) : Error(ExitCode::output_mismatch, what) {}
};

/// HDF5 or file-system failure while reading or writing the output file.
class StorageError : public Error {
 public:
  explicit StorageError(const std::string& what) : Error(ExitCode::failure, what) {}
};

/// Bytes from the network do not decode (torch.save, status JSON, compression).
class DecodeError : public Error {
 public:
  explicit DecodeError(const std::string& what) : Error(ExitCode::failure, what) {}
};

/// The service refused the request itself: bad credentials, unsupported client version, or a
/// request it says is invalid. Retrying cannot help.
class ServiceRefused : public Error {
 public:
  explicit ServiceRefused(const std::string& what) : Error(ExitCode::refused, what) {}
};

/// The run stopped before every batch was done; the output file is valid and resumable.
class IncompleteRun : public Error {
 public:
  explicit IncompleteRun(const std::string& what) : Error(ExitCode::incomplete, what) {}
};

/// A broken invariant inside ndif-sweep itself.
class InternalError : public Error {
 public:
  explicit InternalError(const std::string& what) : Error(ExitCode::failure, what) {}
};

/// What an error ends a process or a rank with: its exit code and its message. For an error that
/// must travel (to rank 0, or into one report of every rank's), as text.
struct ErrorReport {
  ExitCode code = ExitCode::failure;
  std::string message;
};

/// The report of `error`: an ndif::Error's own code and message; any other exception exit 1 with
/// "internal error: " before its text.
[[nodiscard]] ErrorReport report_of(const std::exception_ptr& error);

/// Enough of an untrusted reply to recognise it in an error message: its first 120 bytes, each
/// control byte as '?', and "..." when there was more. Never a whole page of HTML in a log.
[[nodiscard]] std::string reply_excerpt(std::string_view body);

/// An error that `report_of` gives `report` again (an InputError for exit 2), to throw elsewhere.
[[nodiscard]] std::exception_ptr error_from(const ErrorReport& report);

}  // namespace ndif
