#include "ndif_sweep/core/error.hpp"

namespace ndif {

ErrorReport report_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return {e.exit_code(), e.what()};
  } catch (const std::exception& e) {
    return {ExitCode::failure, std::string("internal error: ") + e.what()};
  } catch (...) {
    return {ExitCode::failure, "internal error: an unknown exception"};
  }
}

std::string reply_excerpt(std::string_view body) {
  constexpr std::size_t kMax = 120;
  std::string out;
  for (char c : body.substr(0, kMax)) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  if (body.size() > kMax) out += "...";
  return out;
}

std::exception_ptr error_from(const ErrorReport& report) {
  if (report.code == ExitCode::invalid_input) return std::make_exception_ptr(InputError(report.message));
  return std::make_exception_ptr(Error(report.code, report.message));
}

}  // namespace ndif
