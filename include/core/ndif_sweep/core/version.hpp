#pragma once
/// \file
/// Version strings of the tool and of the protocol it speaks.

namespace ndif {

/// ndif-sweep's own version, stored in every output file and sent as `nnsight-version`'s peer.
inline constexpr const char* kToolVersion = "0.1.0";

/// The nnsight client version whose G2 request format ndif-sweep speaks (docs/protocol.md, G2).
inline constexpr const char* kNnsightVersion = "0.4.11";

}  // namespace ndif
