// Tests of kernels/reduce.hpp: column_sum_add and global_norm_squared equal, bit for bit, a host
// replay of their documented summation order (so they cannot depend on threads or team sizes;
// on a device backend, where FMA contraction changes the last bits, to a few ulps), repeat
// bitwise, and agree with an exact sum within their rounding bound.
#include "kernels/reduce.hpp"

#include <cstring>

#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

// Which of column_sum_add's paths a test runs: the dispatch (the host path on host spaces, the
// team path on a device without a workspace), the dispatch with a workspace (the chunked path on a
// device), or each portable path directly, on any space.
enum class ColumnPath { dispatch, dispatch_workspace, chunked, teams };

// dst[c] += sum_n x[n, c] * w[n] through column_sum_add.
template <class Real>
void column_sums(const Buf<Real>& dst, const Buf<Real>& x, const Buf<Real>& w, int n, int c,
                 ColumnPath path = ColumnPath::dispatch) {
  const ConstFlat<Real, Exec> xs = x.d, ws = w.d;
  const auto f = KOKKOS_LAMBDA(const int row, const int col) {
    return xs(static_cast<index_t>(row) * c + col) * ws(row);
  };
  Buf<Real> workspace(static_cast<std::size_t>(column_sum_workspace(c)) + 1, "workspace");
  switch (path) {
    case ColumnPath::dispatch:
      column_sum_add<Real>(Exec(), dst.d, n, c, f);
      break;
    case ColumnPath::dispatch_workspace:
      column_sum_add<Real>(Exec(), dst.d, n, c, f, workspace.d);
      break;
    case ColumnPath::chunked:
      if (c > 0) detail::column_sum_add_chunked<Real>(Exec(), dst.d, n, c, f, workspace.d);
      break;
    case ColumnPath::teams:
      if (c > 0) detail::column_sum_add_teams<Real>(Exec(), dst.d, n, c, f);
      break;
  }
}

template <class Real>
void check_column_sum(int n, int c, unsigned seed, ColumnPath path = ColumnPath::dispatch) {
  SCOPED_TRACE("N = " + std::to_string(n) + ", C = " + std::to_string(c) + ", path " +
               std::to_string(static_cast<int>(path)));
  Buf<Real> x(static_cast<std::size_t>(n) * c), w(n), dst(c);
  fill_random(x, seed);
  fill_random(w, seed + 1);
  fill_random(dst, seed + 2);
  const std::vector<Real> dst0 = dst.values();
  column_sums(dst, x, w, n, c, path);
  const std::vector<Real> got = dst.values();
  // Replay: 64 chunks of ceil(N / 64) rows, each summed in row order, chunk sums in order.
  const int rows = (n + 63) / 64;
  for (int col = 0; col < c; ++col) {
    Real total = Real(0);
    for (int chunk = 0; chunk < 64; ++chunk) {
      Real part = Real(0);
      for (int row = chunk * rows; row < std::min(n, (chunk + 1) * rows); ++row) {
        part += x[static_cast<std::size_t>(row) * c + col] * w[row];
      }
      total += part;
    }
    const Real expected = static_cast<Real>(dst0[col] + total);
    if (kHostKernels) {
      EXPECT_EQ(got[col], expected) << "column " << col;
    } else {
      EXPECT_NEAR(got[col], expected,
                  4 * eps<Real>() * (n / 64.0 + 65.0) * (std::abs(expected) + 1))
          << "column " << col;
    }
  }
}

TEST(ColumnSum, EqualsDocumentedOrder) {
  for (const ColumnPath path : {ColumnPath::dispatch, ColumnPath::dispatch_workspace,
                                ColumnPath::chunked, ColumnPath::teams}) {
    check_column_sum<double>(10, 8, 1, path);
    check_column_sum<double>(1000, 45, 2, path);
    check_column_sum<float>(4097, 70, 3, path);
    check_column_sum<float>(0, 5, 4, path);
    // More columns than a host block (kHostColumnBlock), the last block partial.
    check_column_sum<float>(300, 2 * detail::kHostColumnBlock + 5, 5, path);
  }
}

// The paths agree bit for bit with each other (on a device too, where the replay is only near).
TEST(ColumnSum, PathsAgreeBitwise) {
  const int n = 1500, c = 1100;
  Buf<float> x(static_cast<std::size_t>(n) * c), w(n);
  fill_random(x, 6);
  fill_random(w, 7);
  std::vector<std::vector<float>> results;
  for (const ColumnPath path : {ColumnPath::dispatch, ColumnPath::dispatch_workspace,
                                ColumnPath::chunked, ColumnPath::teams}) {
    Buf<float> dst(c);
    fill_random(dst, 8);
    column_sums(dst, x, w, n, c, path);
    results.push_back(dst.values());
  }
  for (std::size_t p = 1; p < results.size(); ++p)
    EXPECT_EQ(0, std::memcmp(results[0].data(), results[p].data(), c * sizeof(float))) << p;
}

// Host replay of detail::chunk_sums / global_norm_squared_chunked.
template <class Real>
double replay_norm(const std::vector<Real>& x, index_t chunk) {
  auto level = [chunk](const std::vector<double>& in, bool square) {
    const index_t n = static_cast<index_t>(in.size());
    std::vector<double> out;
    for (index_t begin = 0; begin < n; begin += chunk) {
      const index_t end = std::min(n, begin + chunk);
      double lanes[32];
      for (int lane = 0; lane < 32; ++lane) {
        double sum = 0.0;
        for (index_t i = begin + lane; i < end; i += 32) sum += square ? in[i] * in[i] : in[i];
        lanes[lane] = sum;
      }
      double sum = 0.0;
      for (double lane : lanes) sum += lane;
      out.push_back(sum);
    }
    return out;
  };
  if (x.empty()) return 0.0;
  std::vector<double> values(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) values[i] = static_cast<double>(x[i]);
  values = level(values, true);
  while (values.size() > 1) values = level(values, false);
  return values[0];
}

template <class Real>
void check_norm(index_t n, index_t chunk, unsigned seed) {
  SCOPED_TRACE("n = " + std::to_string(n) + ", chunk = " + std::to_string(chunk));
  Buf<Real> g(static_cast<std::size_t>(n), "grad");
  fill_random(g, seed, -3.0, 3.0);
  const double first = detail::global_norm_squared_chunked<Real>(Exec(), g.d, chunk);
  const double second = detail::global_norm_squared_chunked<Real>(Exec(), g.d, chunk);
  EXPECT_EQ(0, std::memcmp(&first, &second, sizeof(double)));
  const std::vector<Real> values = g.values();
  const double replay = replay_norm(values, chunk);
  if (kHostKernels) {
    EXPECT_EQ(first, replay);
  } else {
    EXPECT_NEAR(first, replay, 8 * eps<double>() * replay);
  }
  long double exact = 0.0L;
  for (Real v : values) exact += static_cast<long double>(v) * static_cast<long double>(v);
  // All terms are positive: relative error <= (depth of the summation tree) * eps.
  int levels = 0;
  for (index_t m = n; m > 1; m = (m + chunk - 1) / chunk) ++levels;
  const double depth = std::max(levels, 1) * (static_cast<double>(chunk) / 32.0 + 32.0);
  EXPECT_NEAR(first, static_cast<double>(exact),
              depth * eps<double>() * static_cast<double>(exact));
  if (chunk == detail::kNormChunk) {
    EXPECT_EQ(first, global_norm_squared<Real>(Exec(), g.d));
  }
}

TEST(GlobalNorm, EqualsDocumentedOrderAndRepeatsBitwise) {
  check_norm<float>(0, detail::kNormChunk, 1);
  check_norm<float>(1, detail::kNormChunk, 2);
  check_norm<double>(31, detail::kNormChunk, 3);
  check_norm<float>(3 * detail::kNormChunk + 17, detail::kNormChunk, 4);
  check_norm<double>(100000, detail::kNormChunk, 5);
  // A small chunk exercises four levels: 300000 -> 4688 -> 74 -> 2 -> 1.
  check_norm<float>(300000, 64, 6);
}

}  // namespace
}  // namespace p2bw::kernels::test
