#pragma once
/// \file
/// Words that ndif-sweep's client and the bundled ndif-local both rely on, defined once.

#include <string_view>

namespace ndif {

/// The prefix of the description of a job that ndif-local could not run because the request
/// itself is wrong; the client's retry policy reads it and does not retry such a job.
inline constexpr std::string_view kInvalidRequestPrefix = "InvalidRequest: ";

}  // namespace ndif
