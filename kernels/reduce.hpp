// Deterministic reductions shared by the layers and the optimizers: column sums over rows (bias
// and LayerNorm parameter gradients) and the squared global norm of a gradient buffer.
// Both fix the summation order by the problem size alone (fixed chunks summed sequentially, then
// the chunk sums in order), so results are bitwise identical run to run and independent of the
// team size, the vector length and the number of threads.
#pragma once

#include <utility>

#include "kernels/types.hpp"

namespace p2bw::kernels {

namespace detail {
constexpr int kColumnBlock = 32;      // columns per team in column_sum_add
constexpr int kRowChunks = 64;        // fixed row partition in column_sum_add
constexpr int kNormLanes = 32;        // virtual lanes per chunk in global_norm_squared
constexpr index_t kNormChunk = 8192;  // elements per chunk in global_norm_squared
}  // namespace detail

// dst[c] += sum over n < N of f(n, c), for c < C, where f is a device functor (int, int) -> T.
// Rows are cut into kRowChunks chunks of ceil(N / kRowChunks) rows; a chunk is summed in row
// order, the chunk sums are added in chunk order, and the total is added to dst[c] once.
// Consecutive columns go to consecutive vector lanes, so row reads are coalesced on GPUs.
template <class Real, class Exec, class F>
void column_sum_add(const Exec& exec, Flat<Real, Exec> dst,  // (C)
                    int N, int C, const F& f) {
  detail::require_size(dst, C, "column_sum_add", "dst");
  if (C == 0) return;
  using detail::kColumnBlock;
  using detail::kRowChunks;
  const int rows_per_chunk = (N + kRowChunks - 1) / kRowChunks;
  const auto policy =
      Kokkos::TeamPolicy<Exec>(exec, (C + kColumnBlock - 1) / kColumnBlock, Kokkos::AUTO,
                               detail::vector_length<Exec>())
          .set_scratch_size(
              0, Kokkos::PerTeam(TeamScratch<Real, Exec>::shmem_size(kRowChunks * kColumnBlock)));
  Kokkos::parallel_for(
      "p2bw::column_sum_add", policy, KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const int c0 = team.league_rank() * kColumnBlock;
        const int nc = C - c0 < kColumnBlock ? C - c0 : kColumnBlock;
        TeamScratch<Real, Exec> partial(team.team_scratch(0),
                                        kRowChunks * kColumnBlock);  // (kRowChunks, kColumnBlock)
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kRowChunks), [&](const int chunk) {
          const int n0 = chunk * rows_per_chunk;
          const int n1 = N - n0 < rows_per_chunk ? N : n0 + rows_per_chunk;
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, nc), [&](const int j) {
            Real sum = Real(0);
            for (int n = n0; n < n1; ++n) sum += f(n, c0 + j);
            partial(chunk * kColumnBlock + j) = sum;
          });
        });
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, nc), [&](const int j) {
          Real sum = Real(0);
          for (int chunk = 0; chunk < kRowChunks; ++chunk) sum += partial(chunk * kColumnBlock + j);
          dst(c0 + j) += sum;
        });
      });
}

namespace detail {

// out[c] = sum over the c-th run of `chunk` elements of in[i]^2 (Square) or in[i], in double.
// Within a run, virtual lane l sums elements l, l + kNormLanes, ... in index order; the lane sums
// are then added in lane order. Only the problem size fixes this order.
template <bool Square, class Real, class Exec>
void chunk_sums(const Exec& exec, ConstFlat<Real, Exec> in, index_t n, index_t chunk,
                Flat<double, Exec> out) {
  const index_t chunks = (n + chunk - 1) / chunk;
  int team_size = 1;
#ifdef KOKKOS_ENABLE_CUDA
  if (std::is_same<Exec, Kokkos::Cuda>::value) team_size = kNormLanes;
#endif
  const auto policy =
      Kokkos::TeamPolicy<Exec>(exec, static_cast<int>(chunks), team_size)
          .set_scratch_size(0, Kokkos::PerTeam(TeamScratch<double, Exec>::shmem_size(kNormLanes)));
  Kokkos::parallel_for(
      "p2bw::chunk_sums", policy, KOKKOS_LAMBDA(const Team<Exec>& team) {
        const index_t begin = team.league_rank() * chunk;
        const index_t end = n - begin < chunk ? n : begin + chunk;
        TeamScratch<double, Exec> lanes(team.team_scratch(0), kNormLanes);  // (kNormLanes)
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kNormLanes), [&](const int lane) {
          double sum = 0.0;
          for (index_t i = begin + lane; i < end; i += kNormLanes) {
            const double x = static_cast<double>(in(i));
            sum += Square ? x * x : x;
          }
          lanes(lane) = sum;
        });
        team.team_barrier();
        Kokkos::single(Kokkos::PerTeam(team), [&]() {
          double sum = 0.0;
          for (int lane = 0; lane < kNormLanes; ++lane) sum += lanes(lane);
          out(team.league_rank()) = sum;
        });
      });
}

// global_norm_squared with a given chunk size (exposed so tests can exercise several levels).
template <class Real, class Exec>
double global_norm_squared_chunked(const Exec& exec, ConstFlat<Real, Exec> grad, index_t chunk) {
  require(chunk >= 2, "global_norm_squared", "chunk must be at least 2");
  const index_t n = static_cast<index_t>(grad.extent(0));
  if (n == 0) return 0.0;
  const index_t level1 = (n + chunk - 1) / chunk;
  const index_t level2 = (level1 + chunk - 1) / chunk;
  using Work = Kokkos::View<double*, Kokkos::LayoutRight, typename Exec::memory_space>;
  Work a(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::norm_partials_a"), level1);
  Work b(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::norm_partials_b"), level2);
  chunk_sums<true, Real>(exec, grad, n, chunk, a);
  index_t count = level1;
  while (count > 1) {
    chunk_sums<false, double>(exec, a, count, chunk, b);
    count = (count + chunk - 1) / chunk;
    std::swap(a, b);
  }
  Kokkos::View<double, Kokkos::HostSpace> result("p2bw::norm");
  Kokkos::deep_copy(exec, result, Kokkos::subview(a, 0));
  exec.fence();
  return result();
}
}  // namespace detail

// Sum of squares of all elements of grad, in double, blocking until done. Fixed-order
// multi-level reduction: sums of kNormChunk-element chunks (see detail::chunk_sums), then chunk
// sums of those, until one value is left; bitwise the same on every run and thread count.
template <class Real, class Exec>
double global_norm_squared(const Exec& exec, ConstFlat<Real, Exec> grad) {  // (n)
  return detail::global_norm_squared_chunked<Real>(exec, grad, detail::kNormChunk);
}

}  // namespace p2bw::kernels
