// .npy reading and writing: round trips of every supported type, files in the layouts NumPy
// itself writes (versions 1, 2, 3; bool), and malformed files whose errors must name the file.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "apps/temp_dir.hpp"
#include "attn/npy.hpp"
#include "support/random.hpp"

namespace attn {
namespace {

using cli::read_npy;
using cli::write_npy;

/// Writes a .npy file by hand: magic, version, header length (2 or 4 bytes), header, data.
void write_raw(const std::string& path, int version, std::string header, const std::string& data) {
  const std::size_t len_bytes = version == 1 ? 2 : 4;
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY", 6);
  f.put(char(version));
  f.put(0);
  const auto n = std::uint32_t(header.size());
  for (std::size_t b = 0; b < len_bytes; ++b) f.put(char((n >> (8 * b)) & 0xff));
  f << header << data;
}

std::string bytes_of(const std::vector<float>& v) { return {reinterpret_cast<const char*>(v.data()), v.size() * 4}; }

void expect_same(const TensorView& a, const TensorView& b) {
  ASSERT_EQ(a.dtype, b.dtype);
  ASSERT_EQ(a.shape_str(), b.shape_str());
  EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes()), 0);
}

TEST(Npy, RoundTripsEveryType) {
  test::TempDir dir;
  for (DType dt : {DType::f32, DType::f64, DType::f16}) {
    const Tensor t = test::randn({2, 3, 4, 5}, dt);
    write_npy(dir / "t.npy", t);
    expect_same(read_npy(dir / "t.npy"), t);
  }
  Tensor ints = test::i32({0, -7, 1 << 30, 42});
  write_npy(dir / "i.npy", ints);
  expect_same(read_npy(dir / "i.npy"), ints);

  Tensor bytes({3, 2}, DType::u8);
  for (int i = 0; i < 6; ++i) bytes.as<std::uint8_t>()[i] = std::uint8_t(i * 50);
  write_npy(dir / "u.npy", bytes);
  expect_same(read_npy(dir / "u.npy"), bytes);

  Tensor empty({0, 4}, DType::f32);
  write_npy(dir / "e.npy", empty);
  EXPECT_EQ(read_npy(dir / "e.npy").view().shape_str(), "(0, 4)");
}

TEST(Npy, WritesStridedViewsInCOrder) {
  test::TempDir dir;
  const Tensor t = test::randn({4, 6}, DType::f32);
  TensorView cols = t.view();  // every other column: shape (4, 3), strides (6, 2)
  cols.shape[1] = 3;
  cols.stride[1] = 2;
  write_npy(dir / "s.npy", cols);
  const Tensor back = read_npy(dir / "s.npy");
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(back.as<float>()[r * 3 + c], t.as<float>()[r * 6 + 2 * c]);
}

TEST(Npy, HeaderIsAlignedAndReadableByNumpyRules) {
  test::TempDir dir;
  write_npy(dir / "a.npy", test::randn({5}, DType::f32));
  std::ifstream f(dir / "a.npy", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const std::size_t header_len = std::uint8_t(all[8]) | (std::size_t(std::uint8_t(all[9])) << 8);
  EXPECT_EQ((10 + header_len) % 64, 0u);
  EXPECT_NE(all.find("'shape': (5,)"), std::string::npos);
  EXPECT_EQ(all[10 + header_len - 1], '\n');
}

TEST(Npy, ReadsVersionsTwoAndThreeAndBool) {
  test::TempDir dir;
  const std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, 8.0f, 9.0f};
  for (int version : {2, 3}) {
    write_raw(dir / "v.npy", version, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", bytes_of(v));
    const Tensor t = read_npy(dir / "v.npy");
    ASSERT_EQ(t.view().shape_str(), "(2, 3)");
    for (int i = 0; i < 6; ++i) EXPECT_EQ(t.as<float>()[i], v[std::size_t(i)]);
  }
  write_raw(dir / "b.npy", 1, "{\"descr\": \"|b1\", \"fortran_order\": False, \"shape\": (3L,)}",
            std::string("\x01\x00\x02", 3));
  const Tensor b = read_npy(dir / "b.npy");
  ASSERT_EQ(b.dtype(), DType::u8);
  EXPECT_EQ(b.as<std::uint8_t>()[0], 1);
  EXPECT_EQ(b.as<std::uint8_t>()[1], 0);
  EXPECT_EQ(b.as<std::uint8_t>()[2], 1);
}

/// The reader's error for this file, which must name it.
std::string read_error(const std::string& path) {
  try {
    read_npy(path);
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  }
  ADD_FAILURE() << path << " was accepted";
  return "";
}

TEST(Npy, MalformedFilesAreClearErrors) {
  test::TempDir dir;
  const std::string data = bytes_of({1, 2, 3, 4, 5, 6});
  write_raw(dir / "fortran.npy", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", data);
  EXPECT_NE(read_error(dir / "fortran.npy").find("fortran_order"), std::string::npos);
  write_raw(dir / "i8.npy", 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", data);
  EXPECT_NE(read_error(dir / "i8.npy").find("'<i8'"), std::string::npos);
  write_raw(dir / "big.npy", 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }", data);
  EXPECT_NE(read_error(dir / "big.npy").find("big-endian"), std::string::npos);
  write_raw(dir / "short.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }", data);
  EXPECT_NE(read_error(dir / "short.npy").find("truncated"), std::string::npos);
  write_raw(dir / "noshape.npy", 1, "{'descr': '<f4', 'fortran_order': False, }", data);
  EXPECT_NE(read_error(dir / "noshape.npy").find("shape"), std::string::npos);
  write_raw(dir / "garbled.npy", 1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (6,), }", data);
  EXPECT_NE(read_error(dir / "garbled.npy").find("header"), std::string::npos);
  write_raw(dir / "scalar.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", data);
  EXPECT_NE(read_error(dir / "scalar.npy").find("dimensions"), std::string::npos);
  {
    std::ofstream f(dir / "cut.npy", std::ios::binary);
    f.write("\x93NUMPY\x01\x00\x76\x00{'descr'", 17);  // header announced, then cut
  }
  EXPECT_NE(read_error(dir / "cut.npy").find("truncated"), std::string::npos);
  {
    std::ofstream f(dir / "text.npy");
    f << "not numpy at all";
  }
  EXPECT_NE(read_error(dir / "text.npy").find("not a .npy"), std::string::npos);
  EXPECT_NE(read_error(dir / "missing.npy").find("cannot open"), std::string::npos);
}

}  // namespace
}  // namespace attn
