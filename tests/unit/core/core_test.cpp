#include <gtest/gtest.h>

#include <array>
#include <filesystem>
#include <fstream>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"
#include "ndif_sweep/core/hash.hpp"

namespace ndif {
namespace {

TEST(Hash, Sha256OfKnownStrings) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Hash, Sha256OfFileEqualsSha256OfItsBytes) {
  auto path = std::filesystem::temp_directory_path() / "ndif_core_test_hash.txt";
  { std::ofstream(path, std::ios::binary) << "abc"; }
  EXPECT_EQ(sha256_file_hex(path), sha256_hex("abc"));
  std::filesystem::remove(path);
}

TEST(Hash, Xxh3OfEmptyInputIsTheReferenceValue) { EXPECT_EQ(xxh3_64({}), 0x2D06800538D394C2ULL); }

TEST(Files, MissingFileIsAnInputErrorNamingThePath) {
  try {
    (void)read_file("/nonexistent/ndif/job.json", "job spec");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(e.exit_code(), ExitCode::invalid_input);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/ndif/job.json"), std::string::npos);
  }
}

}  // namespace
}  // namespace ndif
