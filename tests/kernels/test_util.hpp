// Helpers for the kernel tests: device buffers with host mirrors, seeded random data, the
// projection loss, the 4-point finite-difference gradient check and tolerances scaled by machine
// epsilon and reduction length (bf16 storage's comparisons: bf16_storage.hpp).
#pragma once

#include <gtest/gtest.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace p2bw::kernels::test {

// Kernels under test run on the default execution space (Serial here, the GPU in a CUDA build).
using Exec = Kokkos::DefaultExecutionSpace;

// Whether kernels run on the host. Device compilers contract a * b + c into FMAs (nvcc does by
// default), so a host replay of a kernel's summation order is bitwise equal only on the host.
constexpr bool kHostKernels = std::is_same<Exec::memory_space, Kokkos::HostSpace>::value;

// A device buffer with a host mirror; the host side is what the tests read and write.
template <class T>
struct Buf {
  using Device = Kokkos::View<T*, Kokkos::LayoutRight, Exec::memory_space>;
  Device d;                             // (n)
  typename Device::host_mirror_type h;  // (n)

  explicit Buf(std::size_t n, const std::string& label = "buf")
      : d(label, n), h(Kokkos::create_mirror_view(d)) {}
  std::size_t size() const { return d.extent(0); }
  T& operator[](std::size_t i) const { return h(i); }
  void to_device() const { Kokkos::deep_copy(d, h); }
  void to_host() const {
    Kokkos::fence();
    Kokkos::deep_copy(h, d);
  }
  void fill(T value) const {
    for (std::size_t i = 0; i < size(); ++i) h(i) = value;
    to_device();
  }
  std::vector<T> values() const {
    to_host();
    return std::vector<T>(h.data(), h.data() + size());
  }
  std::vector<double> as_double() const {
    to_host();
    std::vector<double> out(size());
    for (std::size_t i = 0; i < size(); ++i) out[i] = static_cast<double>(h(i));
    return out;
  }
  void assign(const std::vector<T>& v) const {
    for (std::size_t i = 0; i < size(); ++i) h(i) = v[i];
    to_device();
  }
};

// Uniform values in [lo, hi) from a fixed seed.
template <class T>
void fill_random(const Buf<T>& b, unsigned seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<T>(dist(gen));
  b.to_device();
}

inline std::vector<double> random_vector(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<double> v(n);
  for (double& x : v) x = dist(gen);
  return v;
}

template <class T>
constexpr double eps() {
  return std::numeric_limits<T>::epsilon();
}

// L = sum_j out_j R_j, accumulated in long double so the projection adds no rounding of its own.
// scale = sum_j |R_j| max(|out_j|, 1): the magnitude against which the rounding of L is measured
// (the floor 1 covers cancellation in outputs made from O(1) inputs).
struct LossValue {
  double value;
  double scale;
};

template <class T>
LossValue project(const Buf<T>& out, const std::vector<double>& R) {
  out.to_host();
  long double sum = 0.0L;
  double scale = 0.0;
  for (std::size_t j = 0; j < R.size(); ++j) {
    sum += static_cast<long double>(out[j]) * static_cast<long double>(R[j]);
    scale += std::abs(R[j]) * std::max(std::abs(static_cast<double>(out[j])), 1.0);
  }
  return {static_cast<double>(sum), scale};
}

// Finite-difference step for the 4-point stencil in double: its truncation error is O(h^4) and
// its rounding error O(eps |L| / h), balanced at h ~ eps^(1/5) ~ 7e-4 (total ~ eps^(4/5) ~ 3e-13
// relative). sqrt(eps) ~ 1.5e-8 suits a one-sided difference; here it would let rounding dominate
// (eps / h ~ 1e-8). h scales with max(|x|, 1) and is rounded to a power of two, so h and 2h are
// exact (rounding x +- h to x's precision costs at most eps |x|, negligible against h).
inline double fd_step(double x) {
  const double h = std::pow(eps<double>(), 0.2) * std::max(std::abs(x), 1.0);
  return std::exp2(std::round(std::log2(h)));
}

// Tolerance of one finite-difference derivative: the rounding of each L evaluation is bounded by
// eps * n_red * scale (n_red: the longest reduction feeding an output), the stencil amplifies it
// by (1 + 8 + 8 + 1) / 12h = 1.5 / h; the truncation term h^4 * scale assumes O(1) derivatives
// of order five. A factor 4 of slack on top.
inline double fd_tolerance(double h, double scale, double n_red) {
  return 4.0 * (1.5 * eps<double>() * n_red * scale / h + std::pow(h, 4) * scale);
}

struct FdReport {
  double max_error = 0.0;      // max |fd - analytic|
  double max_tolerance = 0.0;  // the largest tolerance used
  double max_ratio = 0.0;      // max |fd - analytic| / tolerance (must be <= 1)
};

// Compares the analytic gradient of L with respect to every element of x against the 4-point
// central difference (-L(x+2h) + 8L(x+h) - 8L(x-h) + L(x-2h)) / 12h. loss() runs the forward
// pass on the current device contents and returns project(...).
template <class LossFn>
FdReport check_gradient(const std::string& what, const Buf<double>& x,
                        const std::vector<double>& analytic, double n_red, LossFn&& loss) {
  FdReport report;
  x.to_host();
  EXPECT_EQ(analytic.size(), x.size()) << what;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    const double h = fd_step(x0);
    double f[4];
    const double offsets[4] = {2.0, 1.0, -1.0, -2.0};
    double scale = 0.0;
    for (int s = 0; s < 4; ++s) {
      x[i] = x0 + offsets[s] * h;
      x.to_device();
      const LossValue l = loss();
      f[s] = l.value;
      scale = std::max(scale, l.scale);
    }
    x[i] = x0;
    x.to_device();
    const double fd = (-f[0] + 8.0 * f[1] - 8.0 * f[2] + f[3]) / (12.0 * h);
    const double tol = fd_tolerance(h, scale, n_red);
    const double err = std::abs(fd - analytic[i]);
    report.max_error = std::max(report.max_error, err);
    report.max_tolerance = std::max(report.max_tolerance, tol);
    report.max_ratio = std::max(report.max_ratio, err / tol);
    EXPECT_LE(err, tol) << what << "[" << i << "]: finite difference " << fd << ", analytic "
                        << analytic[i];
  }
  std::printf("  fd %-28s %4zu elements: max |fd - grad| %.2e, tolerance <= %.2e (ratio %.3f)\n",
              what.c_str(), x.size(), report.max_error, report.max_tolerance, report.max_ratio);
  return report;
}

// Element-wise comparison with a reference: |got - ref| <= 4 eps(T) n_red max(|ref|, scale_floor).
template <class T>
void expect_close(const std::string& what, const std::vector<T>& got,
                  const std::vector<double>& ref, double n_red, double scale_floor = 1.0) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double tol = 4.0 * eps<T>() * n_red * std::max(std::abs(ref[i]), scale_floor);
    const double err = std::abs(static_cast<double>(got[i]) - ref[i]);
    EXPECT_LE(err, tol) << what << "[" << i << "]: got " << got[i] << ", reference " << ref[i];
  }
}

// Gradient = (buffer after backward) - (its value before): backward accumulates into it.
inline std::vector<double> accumulated(const Buf<double>& grad, const std::vector<double>& before) {
  std::vector<double> after = grad.values();
  for (std::size_t i = 0; i < after.size(); ++i) after[i] -= before[i];
  return after;
}

inline double nan() {
  return std::numeric_limits<double>::quiet_NaN();
}

}  // namespace p2bw::kernels::test
