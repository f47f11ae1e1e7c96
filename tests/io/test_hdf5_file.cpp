// The HDF5 wrapper: datasets and attributes round-trip; missing or foreign files are user errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "io/hdf5_file.hpp"

namespace p2bw::io {
namespace {

std::string temp(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + std::to_string(::getpid()))).string();
}

TEST(H5File, DatasetsAndAttributesRoundTrip) {
  const std::string path = temp("p2bw_h5_test.h5");
  {
    H5File file(path, H5File::Mode::create);
    file.write<float>("/params/blocks/0/w", {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f}, {2, 3});
    file.write<std::int64_t>("/steps/step", {1, 2, 3}, {3});
    file.set_attribute("/", "format_version", std::int64_t{3});
    file.set_attribute("/", "deck", std::string("model:\n  layers: 2\n"));
    file.set_attribute("/params/blocks/0/w", "scale", 0.5);
  }
  H5File file(path, H5File::Mode::read);
  std::vector<hsize_t> shape;
  EXPECT_EQ(file.read<float>("/params/blocks/0/w", &shape),
            (std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f}));
  EXPECT_EQ(shape, (std::vector<hsize_t>{2, 3}));
  EXPECT_EQ(file.read<std::int64_t>("/steps/step"), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(file.int_attribute("/", "format_version"), 3);
  EXPECT_EQ(file.string_attribute("/", "deck"), "model:\n  layers: 2\n");
  EXPECT_EQ(file.double_attribute("/params/blocks/0/w", "scale"), 0.5);
  EXPECT_TRUE(file.exists("/params/blocks"));
  EXPECT_FALSE(file.exists("/params/nothing/here"));
  EXPECT_THROW(file.read<float>("/missing"), UserError);
  EXPECT_THROW(file.int_attribute("/", "missing"), UserError);
  std::filesystem::remove(path);
}

TEST(H5File, MissingAndForeignFilesAreUserErrors) {
  EXPECT_THROW(H5File(temp("p2bw_absent.h5"), H5File::Mode::read), UserError);
  const std::string text = temp("p2bw_text.h5");
  std::ofstream(text) << "not hdf5";
  try {
    H5File file(text, H5File::Mode::read);
    FAIL();
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("not an HDF5 file"), std::string::npos);
  }
  std::filesystem::remove(text);
}

}  // namespace
}  // namespace p2bw::io
