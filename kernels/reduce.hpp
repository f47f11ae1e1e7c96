// Deterministic reductions shared by the layers and the optimizers: column sums over rows (bias
// and LayerNorm parameter gradients), fixed-order sums (the loss) and the squared global norm of a
// gradient buffer. The non-blocking forms write their result into device memory with scratch the
// caller keeps, so a training step allocates nothing and copies to the host once.
// Both fix the summation order by the problem size alone (fixed chunks summed sequentially, then
// the chunk sums in order), so results are bitwise identical run to run and independent of the
// team size, the vector length and the number of threads.
#pragma once

#include <utility>

#include "kernels/types.hpp"

namespace p2bw::kernels {

namespace detail {
constexpr int kColumnBlock = 32;        // columns per team in column_sum_add on a device
constexpr int kHostColumnBlock = 1024;  // columns per iteration in column_sum_add on the host
constexpr int kRowChunks = 64;          // fixed row partition in column_sum_add
constexpr int kChunkGroup = 4;          // row chunks per team in column_sum_add_chunked
constexpr int kNormLanes = 32;          // virtual lanes per chunk in global_norm_squared
constexpr index_t kNormChunk = 8192;    // elements per chunk in global_norm_squared

}  // namespace detail

// Elements of the workspace column_sum_add takes on a device for C columns: one partial sum per
// (row chunk, column), (kRowChunks, C).
inline index_t column_sum_workspace(int C) {
  return static_cast<index_t>(detail::kRowChunks) * C;
}

// column_sum_add's three paths (see there), public in detail:: so the tests can run each of them
// on the host and compare them bit for bit.
namespace detail {

// Rows [n0, n1) of row chunk `chunk` of N rows.
KOKKOS_INLINE_FUNCTION void row_chunk(int chunk, int N, int& n0, int& n1) {
  const int rows = (N + kRowChunks - 1) / kRowChunks;
  n0 = chunk * rows;
  n1 = N - n0 < rows ? N : n0 + rows;
}

// Host spaces: blocks of up to kHostColumnBlock columns, the columns in the inner loop, so a row
// is read contiguously (vectorised, prefetched) and a chunk's sums stay in L1; no workspace.
template <class Real, class Exec, class F>
void column_sum_add_host(const Exec& exec, const Flat<Real, Exec>& dst, int N, int C, const F& f) {
  const int blocks = (C + kHostColumnBlock - 1) / kHostColumnBlock;
  Kokkos::parallel_for(
      "p2bw::column_sum_add", Kokkos::RangePolicy<Exec>(exec, 0, blocks), [=](const int block) {
        const int c0 = block * kHostColumnBlock;
        const int nc = C - c0 < kHostColumnBlock ? C - c0 : kHostColumnBlock;
        Real sums[kHostColumnBlock];    // (nc) the current chunk's column sums
        Real totals[kHostColumnBlock];  // (nc) the chunk sums so far, in chunk order
        for (int j = 0; j < nc; ++j) totals[j] = Real(0);
        for (int chunk = 0; chunk < kRowChunks; ++chunk) {
          int n0, n1;
          row_chunk(chunk, N, n0, n1);
          for (int j = 0; j < nc; ++j) sums[j] = Real(0);
          for (int n = n0; n < n1; ++n)
            for (int j = 0; j < nc; ++j) sums[j] += f(n, c0 + j);
          for (int j = 0; j < nc; ++j) totals[j] += sums[j];
        }
        for (int j = 0; j < nc; ++j) dst(c0 + j) += totals[j];
      });
}

// A device with a workspace: teams over (block of kColumnBlock columns, group of kChunkGroup row
// chunks), C / 32 * kRowChunks / kChunkGroup of them (enough to fill a GPU), write each chunk's
// sums into the workspace, the columns across the vector lanes (coalesced row reads); then one
// thread per column adds them in chunk order.
template <class Real, class Exec, class F>
void column_sum_add_chunked(const Exec& exec, const Flat<Real, Exec>& dst, int N, int C, const F& f,
                            const Flat<Real, Exec>& workspace) {  // (kRowChunks, C)
  require_size(workspace, column_sum_workspace(C), "column_sum_add", "workspace");
  const int blocks = (C + kColumnBlock - 1) / kColumnBlock;
  const int team_size = is_host_space<Exec>() ? 1 : kChunkGroup;  // any size: the same sums
  const auto policy = Kokkos::TeamPolicy<Exec>(exec, blocks * (kRowChunks / kChunkGroup), team_size,
                                               vector_length<Exec>());
  Kokkos::parallel_for(
      "p2bw::column_sum_chunks", policy, KOKKOS_LAMBDA(const Team<Exec>& team) {
        const int c0 = (team.league_rank() % blocks) * kColumnBlock;
        const int first = (team.league_rank() / blocks) * kChunkGroup;
        const int nc = C - c0 < kColumnBlock ? C - c0 : kColumnBlock;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kChunkGroup), [&](const int i) {
          int n0, n1;
          row_chunk(first + i, N, n0, n1);
          Real* part = &workspace(static_cast<index_t>(first + i) * C + c0);  // (nc)
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, nc), [&](const int j) {
            Real sum = Real(0);
            for (int n = n0; n < n1; ++n) sum += f(n, c0 + j);
            part[j] = sum;
          });
        });
      });
  Kokkos::parallel_for(
      "p2bw::column_sum_total", Kokkos::RangePolicy<Exec>(exec, 0, C), KOKKOS_LAMBDA(const int c) {
        Real sum = Real(0);
        for (int chunk = 0; chunk < kRowChunks; ++chunk)
          sum += workspace(static_cast<index_t>(chunk) * C + c);
        dst(c) += sum;
      });
}

// A device without a workspace: one team per block of kColumnBlock columns, the chunk sums in
// team scratch (ceil(C / 32) teams: too few to fill a GPU at small C; tests, one-off callers).
template <class Real, class Exec, class F>
void column_sum_add_teams(const Exec& exec, const Flat<Real, Exec>& dst, int N, int C, const F& f) {
  const auto policy =
      Kokkos::TeamPolicy<Exec>(exec, (C + kColumnBlock - 1) / kColumnBlock, Kokkos::AUTO,
                               vector_length<Exec>())
          .set_scratch_size(
              0, Kokkos::PerTeam(TeamScratch<Real, Exec>::shmem_size(kRowChunks * kColumnBlock)));
  Kokkos::parallel_for(
      "p2bw::column_sum_add", policy, KOKKOS_LAMBDA(const Team<Exec>& team) {
        const int c0 = team.league_rank() * kColumnBlock;
        const int nc = C - c0 < kColumnBlock ? C - c0 : kColumnBlock;
        TeamScratch<Real, Exec> partial(team.team_scratch(0),
                                        kRowChunks * kColumnBlock);  // (kRowChunks, kColumnBlock)
        // Row by row, the columns across the vector lanes: coalesced reads on a GPU; each column
        // still sums its rows in order.
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kRowChunks), [&](const int chunk) {
          int n0, n1;
          row_chunk(chunk, N, n0, n1);
          Real* sums = &partial(chunk * kColumnBlock);  // (nc) this chunk's column sums
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, nc),
                               [&](const int j) { sums[j] = Real(0); });
          for (int n = n0; n < n1; ++n)
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, nc),
                                 [&](const int j) { sums[j] += f(n, c0 + j); });
        });
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, nc), [&](const int j) {
          Real sum = Real(0);
          for (int chunk = 0; chunk < kRowChunks; ++chunk) sum += partial(chunk * kColumnBlock + j);
          dst(c0 + j) += sum;
        });
      });
}

}  // namespace detail

// dst[c] += sum over n < N of f(n, c), for c < C, where f is a device functor (int, int) -> T.
// Rows are cut into kRowChunks chunks of ceil(N / kRowChunks) rows; a chunk is summed in row
// order, the chunk sums are added in chunk order (from zero), and the total is added to dst[c]
// once. Each path keeps exactly this order, so all agree bit for bit: host spaces walk rows
// with the columns in the inner loop (column_sum_add_host, no workspace); a device uses the
// caller's `workspace` (column_sum_workspace(C)) to spread the row chunks over teams
// (column_sum_add_chunked), or, without one, one team per 32 columns (column_sum_add_teams).
template <class Real, class Exec, class F>
void column_sum_add(const Exec& exec, Flat<Real, Exec> dst,  // (C)
                    int N, int C, const F& f,
                    Flat<Real, Exec> workspace = Flat<Real, Exec>()) {  // (kRowChunks, C) or empty
  detail::require_size(dst, C, "column_sum_add", "dst");
  if (C == 0) return;
  if constexpr (detail::is_host_space<Exec>()) {
    detail::column_sum_add_host<Real>(exec, dst, N, C, f);
  } else {
    if (workspace.extent(0) > 0)
      detail::column_sum_add_chunked<Real>(exec, dst, N, C, f, workspace);
    else
      detail::column_sum_add_teams<Real>(exec, dst, N, C, f);
  }
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

// Doubles of the partial sums fixed_order_sum keeps for n elements in chunks of `chunk`: the
// first level and the second (later levels reuse them).
inline index_t fixed_order_sum_partials(index_t n, index_t chunk) {
  const index_t level1 = (n + chunk - 1) / chunk;
  return level1 + (level1 + chunk - 1) / chunk;
}

// result(0) = sum of in[i]^2 (Square) or in[i] over i < n, in double, on the device without
// blocking: chunk sums (chunk_sums), then chunk sums of those, until one value is left, in
// `partials` (fixed_order_sum_partials(n, chunk)). Only the problem size fixes the order.
template <bool Square, class Real, class Exec>
void fixed_order_sum(const Exec& exec, ConstFlat<Real, Exec> in, index_t n, index_t chunk,
                     Flat<double, Exec> partials, Flat<double, Exec> result) {
  require(chunk >= 2, "fixed_order_sum", "chunk must be at least 2");
  require_size(in, n, "fixed_order_sum", "in");
  require_size(partials, fixed_order_sum_partials(n, chunk), "fixed_order_sum", "partials");
  require_size(result, 1, "fixed_order_sum", "result");
  if (n == 0) {
    Kokkos::parallel_for(
        "p2bw::fixed_order_sum_empty", Kokkos::RangePolicy<Exec>(exec, 0, 1),
        KOKKOS_LAMBDA(const int) { result(0) = 0.0; });
    return;
  }
  const index_t level1 = (n + chunk - 1) / chunk;
  Flat<double, Exec> a(partials.data(), static_cast<size_t>(level1));  // (level1)
  Flat<double, Exec> b(partials.data() + level1,
                       static_cast<size_t>((level1 + chunk - 1) / chunk));  // (level2)
  chunk_sums<Square, Real>(exec, in, n, chunk, level1 == 1 ? result : a);
  index_t count = level1;
  while (count > 1) {
    const index_t next = (count + chunk - 1) / chunk;
    chunk_sums<false, double>(exec, a, count, chunk, next == 1 ? result : b);
    count = next;
    std::swap(a, b);
  }
}

// global_norm_squared with a given chunk size (exposed so tests can exercise several levels);
// blocking, with partials allocated for this one call.
template <class Real, class Exec>
double global_norm_squared_chunked(const Exec& exec, ConstFlat<Real, Exec> grad, index_t chunk) {
  require(chunk >= 2, "global_norm_squared", "chunk must be at least 2");
  const index_t n = static_cast<index_t>(grad.extent(0));
  using Work = Kokkos::View<double*, Kokkos::LayoutRight, typename Exec::memory_space>;
  Work partials(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::norm_partials"),
                static_cast<size_t>(fixed_order_sum_partials(n, chunk)));
  Work result("p2bw::norm", 1);
  fixed_order_sum<true, Real>(exec, grad, n, chunk, partials, result);
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), result);
  return host(0);
}
}  // namespace detail

// Doubles of the partials global_norm_squared needs for n elements.
inline index_t global_norm_partials(index_t n) {
  return detail::fixed_order_sum_partials(n, detail::kNormChunk);
}

// result(0) = sum of squares of all elements of grad, in double, on the device without blocking,
// with `partials` (global_norm_partials(n)) kept by the caller so that nothing is allocated per
// call. Fixed-order multi-level reduction: sums of kNormChunk-element chunks (see
// detail::chunk_sums), then chunk sums of those, until one value is left; bitwise the same on
// every run and thread count.
template <class Real, class Exec>
void global_norm_squared(const Exec& exec, ConstFlat<Real, Exec> grad,  // (n)
                         Flat<double, Exec> partials,  // (global_norm_partials(n)), scratch
                         Flat<double, Exec> result) {  // (1)
  detail::fixed_order_sum<true, Real>(exec, grad, static_cast<index_t>(grad.extent(0)),
                                      detail::kNormChunk, partials, result);
}

// The same, blocking, with partials allocated for this one call (tests and one-off callers).
template <class Real, class Exec>
double global_norm_squared(const Exec& exec, ConstFlat<Real, Exec> grad) {  // (n)
  return detail::global_norm_squared_chunked<Real>(exec, grad, detail::kNormChunk);
}

}  // namespace p2bw::kernels
