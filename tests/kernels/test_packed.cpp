// Tests of the 128-bit packed elementwise loops (kernels/packed.hpp) and of the kernels written
// as packed bodies (GELU, residual, bf16 pack/unpack, the encoder's forward): for lengths that
// are and are not multiples of the pack width, and for buffers on and one element off a 16-byte
// boundary, every way of running a kernel gives the bytes of its element-by-element loop and
// writes nothing outside its buffers. The ways: the packed loop forced (so that hosts, where the
// entry points never take packs, test it too; off by one on hosts only, since a GPU's 128-bit
// accesses need 16-byte alignment), and the public entry point, which takes packs on a GPU when
// the buffers allow it and falls back to elements when they do not.
#include "kernels/packed.hpp"

#include <cstring>
#include <utility>
#include <vector>

#include "kernels/bf16_pack.hpp"
#include "kernels/encoder.hpp"
#include "kernels/gelu.hpp"
#include "kernels/residual.hpp"
#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

enum class Way { element, packed, packed_off_by_one, entry, entry_off_by_one };
constexpr Way kWays[] = {Way::element, Way::packed, Way::packed_off_by_one, Way::entry,
                         Way::entry_off_by_one};
const char* name(Way w) {
  switch (w) {
    case Way::element:
      return "element loop";
    case Way::packed:
      return "packed loop";
    case Way::packed_off_by_one:
      return "packed loop, buffers off by one";
    case Way::entry:
      return "entry point";
    case Way::entry_off_by_one:
      return "entry point, buffers off by one";
  }
  return "?";
}
bool off_by_one(Way w) {
  return w == Way::packed_off_by_one || w == Way::entry_off_by_one;
}
bool is_entry(Way w) {
  return w == Way::entry || w == Way::entry_off_by_one;
}

constexpr index_t kLengths[] = {1, 7, 8, 9, 67, 4101};
constexpr int kGuard = 9;  // sentinel elements after each buffer (more than a bf16 pack)

template <class T>
T sentinel() {
  return static_cast<T>(-12345.0f);
}

// n values at offset 0 or 1 of an allocation whose other elements hold a sentinel.
template <class T>
struct Region {
  Buf<T> buf;
  index_t offset, n;

  Region(index_t n_, bool shifted) : buf(n_ + 1 + kGuard, "region"), offset(shifted), n(n_) {
    buf.fill(sentinel<T>());
  }
  T* ptr() const { return buf.d.data() + offset; }
  Flat<T, Exec> view() const { return Kokkos::subview(buf.d, std::make_pair(offset, offset + n)); }
  void set(const std::vector<T>& v) const {
    for (index_t j = 0; j < n; ++j) buf[offset + j] = v[j];
    buf.to_device();
  }
  // The region's bytes, after checking that nothing outside it changed.
  std::vector<unsigned char> bytes(const char* what) const {
    buf.to_host();
    const T s = sentinel<T>();
    for (index_t j = 0; j < static_cast<index_t>(buf.size()); ++j) {
      if (j >= offset && j < offset + n) continue;
      EXPECT_EQ(std::memcmp(&buf[j], &s, sizeof(T)), 0)
          << what << ": element " << j - offset << " outside the buffer was written";
    }
    std::vector<unsigned char> out(sizeof(T) * n);
    std::memcpy(out.data(), &buf[offset], out.size());
    return out;
  }
};

template <class T>
std::vector<T> random_values(index_t n, unsigned seed, double lo = -4.0, double hi = 4.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(static_cast<float>(dist(gen)));
  return v;
}

// The body through for_each_packed: element by element for Way::element, else packed.
template <class Body, int W>
void run_body(Way way, index_t n, const Body& body) {
  for_each_packed<W>(Exec(), "p2bw::test_packed", n, way != Way::element, body);
}

// Runs case_(way, n) for every way and length and expects the element loop's bytes from each.
// case_ returns the bytes of every buffer the kernel writes. entries_exact: whether the entry
// point runs the same body (false where the host entry point is a separate host loop).
template <class Case>
void expect_ways_agree(const char* kernel, Case case_, bool entries_exact = true) {
  for (const index_t n : kLengths) {
    const auto reference = case_(Way::element, n);
    for (const Way way : kWays) {
      if (way == Way::element || (is_entry(way) && !entries_exact)) continue;
      // A device's packed loop takes 16-byte aligned buffers only (its loads and stores are
      // 128-bit: misaligned ones fault), so there only the entry point sees buffers off by one.
      if (way == Way::packed_off_by_one && detail::packs_pay<Exec>()) continue;
      EXPECT_EQ(case_(way, n), reference) << kernel << ", n = " << n << ": " << name(way);
    }
  }
}

void append(std::vector<unsigned char>& all, const std::vector<unsigned char>& more) {
  all.insert(all.end(), more.begin(), more.end());
}

template <class Real, class Store>
void check_gelu() {
  constexpr int W = pack_width<Store>();
  // On the host, float and bf16 GELU entry points run their own (multi-versioned) host loops.
  constexpr bool entries_exact = !detail::gelu_on_host<Real, Store, Exec>();
  expect_ways_agree(
      "gelu_forward",
      [](Way way, index_t n) {
        Region<Store> inp(n, off_by_one(way)), out(n, off_by_one(way));
        inp.set(random_values<Store>(n, 1, -6.0, 6.0));
        if (is_entry(way))
          gelu_forward<Real, Store>(Exec(), out.view(), inp.view(), n);
        else
          run_body<detail::GeluForward<Real, Store>, W>(way, n, {out.ptr(), inp.ptr()});
        auto all = out.bytes("out");
        append(all, inp.bytes("inp"));
        return all;
      },
      entries_exact);
  expect_ways_agree(
      "gelu_backward",
      [](Way way, index_t n) {
        Region<Store> inp(n, off_by_one(way)), dout(n, off_by_one(way)), dinp(n, off_by_one(way));
        inp.set(random_values<Store>(n, 2, -6.0, 6.0));
        dout.set(random_values<Store>(n, 3));
        if (is_entry(way))
          gelu_backward<Real, Store>(Exec(), dinp.view(), dout.view(), inp.view(), n);
        else
          run_body<detail::GeluBackward<Real, Store>, W>(way, n,
                                                         {dinp.ptr(), dout.ptr(), inp.ptr()});
        return dinp.bytes("dinp");
      },
      entries_exact);
}

template <class Real, class Store>
void check_residual() {
  constexpr int W = pack_width<Store>();
  expect_ways_agree("residual_forward", [](Way way, index_t n) {
    Region<Store> a(n, off_by_one(way)), b(n, off_by_one(way)), out(n, off_by_one(way));
    a.set(random_values<Store>(n, 4));
    b.set(random_values<Store>(n, 5));
    if (is_entry(way))
      residual_forward<Real, Store>(Exec(), out.view(), a.view(), b.view(), n);
    else
      run_body<detail::ResidualForward<Real, Store>, W>(way, n, {out.ptr(), a.ptr(), b.ptr()});
    return out.bytes("out");
  });
  // Both gradients accumulated, then only da (db skipped: empty view, null pointer).
  for (const bool with_db : {true, false}) {
    expect_ways_agree("residual_backward", [with_db](Way way, index_t n) {
      Region<Store> da(n, off_by_one(way)), db(n, off_by_one(way)), dout(n, off_by_one(way));
      da.set(random_values<Store>(n, 6));
      db.set(random_values<Store>(n, 7));
      dout.set(random_values<Store>(n, 8));
      if (is_entry(way)) {
        residual_backward<Real, Store>(Exec(), da.view(), with_db ? db.view() : Flat<Store, Exec>(),
                                       dout.view(), n);
      } else {
        run_body<detail::ResidualBackward<Real, Store>, W>(
            way, n, {da.ptr(), with_db ? db.ptr() : nullptr, dout.ptr()});
      }
      auto all = da.bytes("da");
      append(all, db.bytes("db"));
      return all;
    });
  }
}

TEST(Packed, WidthsAndAlignment) {
  EXPECT_EQ(pack_width<bf16>(), 8);
  EXPECT_EQ(pack_width<float>(), 4);
  EXPECT_EQ(pack_width<double>(), 2);
  static_assert(sizeof(Pack<bf16, 8>) == 16 && alignof(Pack<bf16, 8>) == 16, "bf16 pack");
  static_assert(sizeof(Pack<float, 4>) == 16 && alignof(Pack<float, 4>) == 16, "float pack");
  alignas(16) float buf[8] = {};
  EXPECT_TRUE(detail::on_16_bytes(buf, buf + 4, static_cast<float*>(nullptr)));
  EXPECT_FALSE(detail::on_16_bytes(buf, buf + 1));
  // Packs pay on devices only (see kernels/packed.hpp).
  EXPECT_FALSE(detail::packs_pay<Kokkos::DefaultHostExecutionSpace>());
  EXPECT_FALSE(detail::use_packs<Kokkos::DefaultHostExecutionSpace>(buf));
#ifdef KOKKOS_ENABLE_CUDA
  EXPECT_TRUE(detail::packs_pay<Kokkos::Cuda>());
  EXPECT_TRUE(detail::use_packs<Kokkos::Cuda>(buf));
  EXPECT_FALSE(detail::use_packs<Kokkos::Cuda>(buf, buf + 1));
#endif
}

TEST(Packed, Gelu) {
  check_gelu<double, double>();
  check_gelu<float, float>();
  check_gelu<float, bf16>();
}

TEST(Packed, Residual) {
  check_residual<double, double>();
  check_residual<float, float>();
  check_residual<float, bf16>();
}

TEST(Packed, Bf16PackAndUnpack) {
  constexpr int W = pack_width<bf16>();
  expect_ways_agree("pack_bf16", [](Way way, index_t n) {
    Region<float> in(n, off_by_one(way));
    Region<bf16> out(n, off_by_one(way));
    std::vector<float> v = random_values<float>(n, 9);
    if (n > 3) {  // rounding's edge cases: a tie to even, NaN, infinity
      v[0] = 1.00390625f;
      v[1] = std::numeric_limits<float>::quiet_NaN();
      v[2] = -std::numeric_limits<float>::infinity();
    }
    in.set(v);
    if (is_entry(way))
      pack_bf16(Exec(), out.view(), in.view(), n);
    else
      run_body<detail::PackBf16, W>(way, n, {out.ptr(), in.ptr()});
    return out.bytes("out");
  });
  expect_ways_agree("unpack_bf16", [](Way way, index_t n) {
    Region<bf16> in(n, off_by_one(way));
    Region<float> out(n, off_by_one(way));
    in.set(random_values<bf16>(n, 10));
    if (is_entry(way))
      unpack_bf16(Exec(), out.view(), in.view(), n);
    else
      run_body<detail::UnpackBf16, W>(way, n, {out.ptr(), in.ptr()});
    return out.bytes("out");
  });
}

// The encoder packs along a row only, so its packed loop needs the width to divide C; with C = 5
// the entry point runs element by element.
template <class Real, class Store>
void check_encoder(int C) {
  constexpr int W = pack_width<Store>();
  constexpr int B = 2, T = 3, Vp = 7;
  const index_t BT = B * T;
  for (const Way way : kWays) {
    if (way == Way::element) continue;
    if (!is_entry(way) && C % W != 0) continue;
    auto run = [&](Way w) {
      Region<Store> out(BT * C, off_by_one(w)), wte(Vp * C, off_by_one(w)),
          wpe(T * C, off_by_one(w));
      Buf<int> tokens(BT, "tokens");
      for (index_t i = 0; i < BT; ++i) tokens[i] = static_cast<int>((5 * i + 3) % Vp);
      tokens.to_device();
      wte.set(random_values<Store>(Vp * C, 11));
      wpe.set(random_values<Store>(T * C, 12));
      if (is_entry(w)) {
        encoder_forward<Real, Store>(Exec(), out.view(), tokens.d, wte.view(), wpe.view(), B, T, C);
      } else {
        run_body<detail::EncoderForward<Real, Store>, W>(
            w, BT * C, {out.ptr(), tokens.d.data(), wte.ptr(), wpe.ptr(), T, C});
      }
      return out.bytes("out");
    };
    EXPECT_EQ(run(way), run(Way::element)) << "encoder_forward, C = " << C << ": " << name(way);
  }
}

TEST(Packed, EncoderForward) {
  for (const int C : {16, 5}) {
    check_encoder<double, double>(C);
    check_encoder<float, float>(C);
    check_encoder<float, bf16>(C);
  }
}

}  // namespace
}  // namespace p2bw::kernels::test
