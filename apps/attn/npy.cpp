#include "npy.hpp"

#include <bit>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <vector>

#include "attn/half.hpp"

namespace attn::cli {
namespace {

static_assert(std::endian::native == std::endian::little, "the .npy reader assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;
// NumPy pads the preamble + header to a multiple of 64 bytes so the data is aligned.
constexpr std::size_t kHeaderAlign = 64;

/// The header's Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }.
struct Header {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
};

/// A cursor over the header text; every error names the file.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  Header parse() {
    Header h;
    bool seen_descr = false, seen_shape = false;
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = string_literal();
      expect(':');
      if (key == "descr") {
        h.descr = string_literal();
        seen_descr = true;
      } else if (key == "fortran_order") {
        h.fortran_order = boolean();
      } else if (key == "shape") {
        h.shape = tuple();
        seen_shape = true;
      } else {
        bad("unexpected header key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') ++pos_;
    }
    if (!seen_descr) bad("header has no 'descr'");
    if (!seen_shape) bad("header has no 'shape'");
    return h;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const { detail::fail(path_, ": malformed .npy header: ", what); }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void expect(char c) {
    skip_ws();
    if (peek() != c) bad(std::string("expected '") + c + "' at offset " + std::to_string(pos_));
    ++pos_;
  }
  std::string string_literal() {
    skip_ws();
    const char quote = peek();
    if (quote != '\'' && quote != '"') bad("expected a quoted string at offset " + std::to_string(pos_));
    const std::size_t end = s_.find(quote, pos_ + 1);
    if (end == std::string::npos) bad("unterminated string");
    std::string out = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    skip_ws();
    if (s_.compare(pos_, 4, "True") == 0) return pos_ += 4, true;
    if (s_.compare(pos_, 5, "False") == 0) return pos_ += 5, false;
    bad("expected True or False for 'fortran_order'");
  }
  std::vector<std::int64_t> tuple() {
    expect('(');
    std::vector<std::int64_t> dims;
    while (true) {
      skip_ws();
      if (peek() == ')') break;
      if (!std::isdigit(static_cast<unsigned char>(peek()))) bad("expected a non-negative integer in 'shape'");
      std::int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        if (v > (std::numeric_limits<std::int64_t>::max() - 9) / 10) bad("a dimension in 'shape' is too large");
        v = v * 10 + (s_[pos_++] - '0');
      }
      if (peek() == 'L') ++pos_;  // Python 2 long literals, as old files have them
      dims.push_back(v);
      skip_ws();
      if (peek() == ',') ++pos_;
    }
    ++pos_;
    return dims;
  }

  const std::string& s_;
  const std::string& path_;
  std::size_t pos_ = 0;
};

/// The attn dtype of a descr, or throws naming the file.
DType dtype_of(const std::string& descr, const std::string& path, bool& is_bool) {
  is_bool = false;
  if (descr.size() >= 2 && descr[0] == '>' && descr.substr(1) != "u1" && descr.substr(1) != "b1")
    detail::fail(path, ": big-endian data ('", descr, "') is not supported; save it little-endian (astype('<",
                 descr.substr(1), "'))");
  // '|' (not applicable) and '=' (native, little-endian here) mean the same as '<' for us.
  const std::string t = descr.size() >= 2 && (descr[0] == '<' || descr[0] == '|' || descr[0] == '=' || descr[0] == '>')
                            ? descr.substr(1)
                            : descr;
  if (t == "f4") return DType::f32;
  if (t == "f8") return DType::f64;
  if (t == "f2") return DType::f16;
  if (t == "i4") return DType::i32;
  if (t == "u1") return DType::u8;
  if (t == "b1") {
    is_bool = true;
    return DType::u8;
  }
  detail::fail(path, ": unsupported dtype '", descr, "' (expected float32, float64, float16, int32, uint8 or bool)");
}

const char* descr_of(DType t) {
  switch (t) {
    case DType::f32:
      return "<f4";
    case DType::f64:
      return "<f8";
    case DType::f16:
      return "<f2";
    case DType::i32:
      return "<i4";
    case DType::u8:
      return "|u1";
    case DType::bf16:
      break;  // NumPy has no bfloat16
  }
  return nullptr;
}

std::uint32_t read_le(const unsigned char* p, int bytes) {
  std::uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

Tensor read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  ATTN_CHECK(f.good(), path, ": cannot open for reading");
  f.seekg(0, std::ios::end);
  const std::int64_t file_size = f.tellg();
  f.seekg(0);

  unsigned char pre[kMagicLen + 2 + 4] = {};
  f.read(reinterpret_cast<char*>(pre), kMagicLen + 2);
  ATTN_CHECK(f.gcount() == std::streamsize(kMagicLen + 2) && std::memcmp(pre, kMagic, kMagicLen) == 0, path,
             ": not a .npy file (no \\x93NUMPY magic)");
  const int major = pre[kMagicLen];
  ATTN_CHECK(major >= 1 && major <= 3, path, ": unsupported .npy format version ", major, ".", int(pre[kMagicLen + 1]));
  const int len_bytes = major == 1 ? 2 : 4;
  f.read(reinterpret_cast<char*>(pre + kMagicLen + 2), len_bytes);
  ATTN_CHECK(f.gcount() == len_bytes, path, ": truncated .npy header");
  const std::uint32_t header_len = read_le(pre + kMagicLen + 2, len_bytes);
  const std::int64_t data_start = std::int64_t(kMagicLen + 2 + len_bytes) + header_len;
  ATTN_CHECK(data_start <= file_size, path, ": truncated .npy header (", header_len, " bytes announced, file has ",
             file_size, ")");
  std::string text(header_len, '\0');
  f.read(text.data(), header_len);

  const Header h = HeaderParser(text, path).parse();
  bool is_bool = false;
  const DType dt = dtype_of(h.descr, path, is_bool);
  ATTN_CHECK(!h.fortran_order || h.shape.size() <= 1, path,
             ": fortran_order arrays are not supported (save with np.ascontiguousarray)");
  ATTN_CHECK(!h.shape.empty() && int(h.shape.size()) <= kMaxDims, path, ": expected 1 to ", kMaxDims,
             " dimensions, got ", h.shape.size());

  std::int64_t numel = 1;
  for (std::int64_t d : h.shape) {
    ATTN_CHECK(d == 0 || numel <= std::numeric_limits<std::int64_t>::max() / 8 / d, path, ": shape is too large");
    numel *= d;
  }
  const std::int64_t want = numel * std::int64_t(dtype_size(dt));
  ATTN_CHECK(file_size - data_start >= want, path, ": truncated: expected ", want, " data bytes, got ",
             file_size - data_start);

  Tensor t(std::span<const std::int64_t>(h.shape.data(), h.shape.size()), dt);
  f.read(static_cast<char*>(t.data()), want);
  ATTN_CHECK(f.gcount() == want, path, ": read failed after ", f.gcount(), " of ", want, " data bytes");
  if (is_bool) {
    // NumPy bools are single bytes; normalise so any non-zero byte reads as 1.
    auto* p = t.as<std::uint8_t>();
    for (std::int64_t i = 0; i < numel; ++i) p[i] = p[i] != 0;
  }
  return t;
}

void write_npy(const std::string& path, const TensorView& t) {
  const char* descr = descr_of(t.dtype);
  ATTN_CHECK(descr != nullptr, path, ": cannot write dtype ", dtype_name(t.dtype), " to .npy");
  ATTN_CHECK(t.device.is_cpu(), path, ": expected a cpu tensor, got ", t.device.str());
  ATTN_CHECK(t.defined(), path, ": nothing to write (undefined tensor)");

  std::string shape = "(";
  for (int d = 0; d < t.ndim; ++d) shape += (d ? ", " : "") + std::to_string(t.shape[std::size_t(d)]);
  shape += t.ndim == 1 ? ",)" : ")";  // Python's one-element tuple
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  const bool v2 = header.size() + 1 + kMagicLen + 2 + 2 > 65535;
  const std::size_t pre = kMagicLen + 2 + (v2 ? 4 : 2);
  header.append((kHeaderAlign - (pre + header.size() + 1) % kHeaderAlign) % kHeaderAlign, ' ');
  header += '\n';

  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  ATTN_CHECK(f.good(), path, ": cannot open for writing");
  f.write(kMagic, kMagicLen);
  const char version[2] = {char(v2 ? 2 : 1), 0};
  f.write(version, 2);
  const std::uint32_t n = std::uint32_t(header.size());
  const unsigned char len[4] = {std::uint8_t(n), std::uint8_t(n >> 8), std::uint8_t(n >> 16), std::uint8_t(n >> 24)};
  f.write(reinterpret_cast<const char*>(len), v2 ? 4 : 2);
  f.write(header.data(), std::streamsize(header.size()));

  if (t.is_contiguous()) {
    f.write(static_cast<const char*>(t.data), std::streamsize(t.nbytes()));
  } else {
    Tensor c(std::span<const std::int64_t>(t.shape.data(), std::size_t(t.ndim)), t.dtype);
    copy(c.view(), t);
    f.write(static_cast<const char*>(c.data()), std::streamsize(c.nbytes()));
  }
  f.flush();
  ATTN_CHECK(f.good(), path, ": write failed");
}

}  // namespace attn::cli
