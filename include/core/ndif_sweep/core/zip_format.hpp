#pragma once
/// \file
/// The numbers of the ZIP format (PKWARE APPNOTE) that torch.save archives use, shared by the
/// writer (core/zip_writer.hpp) and the reader (torchsave's zip_archive).

#include <cstddef>
#include <cstdint>

namespace ndif::zip {

inline constexpr std::uint32_t kLocalHeaderSig = 0x04034b50;
inline constexpr std::uint32_t kCentralHeaderSig = 0x02014b50;
inline constexpr std::uint32_t kEndSig = 0x06054b50;
inline constexpr std::uint32_t kZip64EndSig = 0x06064b50;
inline constexpr std::uint32_t kZip64LocatorSig = 0x07064b50;
inline constexpr std::size_t kLocalHeaderSize = 30;
inline constexpr std::size_t kCentralHeaderSize = 46;
inline constexpr std::size_t kEndSize = 22;
inline constexpr std::size_t kZip64EndSize = 56;
inline constexpr std::size_t kZip64LocatorSize = 20;
inline constexpr std::uint16_t kZip64ExtraId = 0x0001;
inline constexpr std::uint16_t kPaddingExtraId = 0x4246;  ///< "FB", the padding field torch writes
inline constexpr std::uint32_t k32 = 0xFFFFFFFFu;         ///< a 32-bit field that says "see ZIP64"
inline constexpr std::uint16_t k16 = 0xFFFFu;
/// 1980-01-01, the earliest MS-DOS date; a fixed stamp keeps archives byte-for-byte reproducible.
inline constexpr std::uint16_t kDosDate = 0x21;

}  // namespace ndif::zip
