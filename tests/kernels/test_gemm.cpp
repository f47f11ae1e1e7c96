// Tests of kernels/gemm.hpp: the dispatched GEMM (CBLAS on host spaces) and the native Kokkos
// kernel against naive loops, for all four transpose combinations, the strided-batched variant,
// partial tiles, k = 0, BLAS's beta = 0 semantics (C not read) and the shape checks.
#include "kernels/gemm.hpp"

#include <cstring>

#include "test_util.hpp"

namespace p2bw::kernels::test {
namespace {

enum class Path { dispatch, native };

struct GemmCase {
  Trans ta, tb;
  int batch, m, n, k;
  double alpha, beta;
};

std::string describe(const GemmCase& g) {
  return std::string(g.ta == Trans::N ? "N" : "T") + (g.tb == Trans::N ? "N" : "T") +
         " batch=" + std::to_string(g.batch) + " m=" + std::to_string(g.m) +
         " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) +
         " beta=" + std::to_string(g.beta);
}

// Runs one case on one path; batch == 1 goes through the 2-D entry point.
template <class T>
std::vector<T> run(const GemmCase& g, Path path, const Buf<T>& A, const Buf<T>& B,
                   const std::vector<T>& c0) {
  const int ar = g.ta == Trans::N ? g.m : g.k, ac = g.ta == Trans::N ? g.k : g.m;
  const int br = g.tb == Trans::N ? g.k : g.n, bc = g.tb == Trans::N ? g.n : g.k;
  Buf<T> C(static_cast<std::size_t>(g.batch) * g.m * g.n, "C");
  C.assign(c0);
  const Exec exec;
  const T alpha = static_cast<T>(g.alpha), beta = static_cast<T>(g.beta);
  if (g.batch == 1) {
    const ConstMatrix<T, Exec> a(A.d.data(), ar, ac);  // (ar, ac)
    const ConstMatrix<T, Exec> b(B.d.data(), br, bc);  // (br, bc)
    const Matrix<T, Exec> c(C.d.data(), g.m, g.n);     // (m, n)
    if (path == Path::dispatch) {
      gemm<T>(exec, g.ta, g.tb, alpha, a, b, beta, c);
    } else {
      gemm_native<T>(exec, g.ta, g.tb, alpha, a, b, beta, c);
    }
  } else {
    const ConstMatrixBatch<T, Exec> a(A.d.data(), g.batch, ar, ac);  // (batch, ar, ac)
    const ConstMatrixBatch<T, Exec> b(B.d.data(), g.batch, br, bc);  // (batch, br, bc)
    const MatrixBatch<T, Exec> c(C.d.data(), g.batch, g.m, g.n);     // (batch, m, n)
    if (path == Path::dispatch) {
      gemm_batched<T>(exec, g.ta, g.tb, alpha, a, b, beta, c);
    } else {
      gemm_native_batched<T>(exec, g.ta, g.tb, alpha, a, b, beta, c);
    }
  }
  return C.values();
}

template <class T>
void check_case(const GemmCase& g, unsigned seed) {
  SCOPED_TRACE(describe(g));
  const int ar = g.ta == Trans::N ? g.m : g.k, ac = g.ta == Trans::N ? g.k : g.m;
  const int br = g.tb == Trans::N ? g.k : g.n, bc = g.tb == Trans::N ? g.n : g.k;
  Buf<T> A(static_cast<std::size_t>(g.batch) * ar * ac, "A");  // (batch, ar, ac)
  Buf<T> B(static_cast<std::size_t>(g.batch) * br * bc, "B");  // (batch, br, bc)
  fill_random(A, seed);
  fill_random(B, seed + 1);
  std::vector<T> c0(static_cast<std::size_t>(g.batch) * g.m * g.n);  // (batch, m, n)
  {
    const std::vector<double> r = random_vector(c0.size(), seed + 2);
    for (std::size_t i = 0; i < c0.size(); ++i) {
      // beta == 0: C must not be read, so NaN in it must not reach the result.
      c0[i] = g.beta == 0.0 ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(r[i]);
    }
  }
  // Naive reference in long double, and the magnitude |alpha| sum |a b| + |beta c| per element.
  std::vector<double> ref(c0.size()), scale(c0.size());
  for (int b = 0; b < g.batch; ++b) {
    for (int i = 0; i < g.m; ++i) {
      for (int j = 0; j < g.n; ++j) {
        long double sum = 0.0L;
        double mag = 0.0;
        for (int kk = 0; kk < g.k; ++kk) {
          const double a = g.ta == Trans::N ? A[(b * ar + i) * ac + kk] : A[(b * ar + kk) * ac + i];
          const double bb =
              g.tb == Trans::N ? B[(b * br + kk) * bc + j] : B[(b * br + j) * bc + kk];
          sum += static_cast<long double>(a) * bb;
          mag += std::abs(a * bb);
        }
        const std::size_t idx = (static_cast<std::size_t>(b) * g.m + i) * g.n + j;
        const double c = g.beta == 0.0 ? 0.0 : static_cast<double>(c0[idx]);
        ref[idx] = static_cast<double>(g.alpha * sum + g.beta * c);
        scale[idx] = std::abs(g.alpha) * mag + std::abs(g.beta * c);
      }
    }
  }
  const std::vector<T> dispatch = run<T>(g, Path::dispatch, A, B, c0);
  const std::vector<T> native = run<T>(g, Path::native, A, B, c0);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    // k products and k additions, plus alpha and beta: rounding bounded by ~ (k + 2) eps scale.
    const double tol = 2.0 * (g.k + 2) * eps<T>() * std::max(scale[i], eps<T>());
    EXPECT_NEAR(static_cast<double>(dispatch[i]), ref[i], tol) << "dispatch, element " << i;
    EXPECT_NEAR(static_cast<double>(native[i]), ref[i], tol) << "native, element " << i;
    EXPECT_NEAR(static_cast<double>(native[i]), static_cast<double>(dispatch[i]), 2.0 * tol)
        << "native vs dispatch, element " << i;
  }
}

template <class T>
void check_all_transposes(int batch, double beta, unsigned seed) {
  for (Trans ta : {Trans::N, Trans::T}) {
    for (Trans tb : {Trans::N, Trans::T}) {
      // Sizes that are not multiples of the native kernel's 16x16 tiles, k spanning 3 k-tiles.
      check_case<T>({ta, tb, batch, 37, 23, 40, 0.75, beta}, seed++);
      check_case<T>({ta, tb, batch, 1, 17, 5, -1.5, beta}, seed++);
    }
  }
}

TEST(Gemm, BackendOnHostIsCblasWhenLinked) {
#ifdef P2BW_HAVE_CBLAS
  const char* host = "cblas";
#else
  const char* host = "native";  // a CUDA build without CBLAS (P2BW_CBLAS=OFF)
#endif
  EXPECT_STREQ((gemm_backend_name<double, Kokkos::DefaultHostExecutionSpace>()), host);
  EXPECT_STREQ((gemm_backend_name<float, Kokkos::DefaultHostExecutionSpace>()), host);
  std::printf("  gemm backend on the default execution space: %s\n",
              gemm_backend_name<float, Exec>());
}

TEST(Gemm, AllTransposesDouble) {
  check_all_transposes<double>(1, 0.5, 100);
  check_all_transposes<double>(1, 0.0, 200);
}

TEST(Gemm, AllTransposesFloat) {
  check_all_transposes<float>(1, 0.5, 300);
  check_all_transposes<float>(1, 0.0, 400);
}

TEST(Gemm, StridedBatched) {
  check_all_transposes<double>(3, 0.5, 500);
  check_all_transposes<double>(3, 0.0, 600);
  check_all_transposes<float>(3, -0.25, 700);
}

TEST(Gemm, EmptyInnerDimensionScalesC) {
  check_case<double>({Trans::N, Trans::N, 1, 5, 4, 0, 1.0, 0.5}, 800);
  check_case<double>({Trans::T, Trans::N, 2, 5, 4, 0, 1.0, 0.0}, 801);
}

TEST(Gemm, ShapeMismatchThrows) {
  Buf<double> a(6), b(6), c(4);
  const Exec exec;
  const ConstMatrix<double, Exec> A(a.d.data(), 2, 3);  // (2, 3)
  const ConstMatrix<double, Exec> B(b.d.data(), 2, 3);  // (2, 3): N,N needs (3, n)
  const Matrix<double, Exec> C(c.d.data(), 2, 2);       // (2, 2)
  EXPECT_THROW(gemm<double>(exec, Trans::N, Trans::N, 1.0, A, B, 0.0, C), std::invalid_argument);
  EXPECT_THROW(gemm_native<double>(exec, Trans::N, Trans::N, 1.0, A, B, 0.0, C),
               std::invalid_argument);
  EXPECT_NO_THROW(gemm<double>(exec, Trans::N, Trans::T, 1.0, A, B, 0.0, C));
}

TEST(Gemm, NativeIsDeterministic) {
  const GemmCase g{Trans::T, Trans::N, 2, 37, 23, 40, 1.0, 0.0};
  const int ar = g.k, ac = g.m, br = g.k, bc = g.n;
  Buf<float> A(static_cast<std::size_t>(g.batch) * ar * ac),
      B(static_cast<std::size_t>(g.batch) * br * bc);
  fill_random(A, 900);
  fill_random(B, 901);
  const std::vector<float> c0(static_cast<std::size_t>(g.batch) * g.m * g.n, 0.0f);
  const std::vector<float> first = run<float>(g, Path::native, A, B, c0);
  const std::vector<float> second = run<float>(g, Path::native, A, B, c0);
  EXPECT_EQ(0, std::memcmp(first.data(), second.data(), first.size() * sizeof(float)));
}

}  // namespace
}  // namespace p2bw::kernels::test
