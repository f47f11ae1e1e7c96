// Which elements of a flat parameter buffer get weight decay, as sorted, disjoint [begin, end)
// ranges (matrices decay; LayerNorm parameters and biases do not), and for_each_decay, the loop
// over a buffer by runs of equal decay that AdamW and SGD update with.
#pragma once

#include <utility>
#include <vector>

#include "kernels/types.hpp"

namespace p2bw::kernels {

template <class Exec>
class DecayRanges {
 public:
  // No decay anywhere.
  DecayRanges() = default;

  // ranges: [begin, end) pairs, sorted by begin, disjoint, begin < end (checked).
  DecayRanges(const Exec& exec, const std::vector<std::pair<index_t, index_t>>& ranges)
      : count_(static_cast<int>(ranges.size())) {
    for (std::size_t r = 0; r < ranges.size(); ++r) {
      detail::require(ranges[r].first >= 0 && ranges[r].first < ranges[r].second, "DecayRanges",
                      "range " + std::to_string(r) + " is empty or negative");
      detail::require(r == 0 || ranges[r - 1].second <= ranges[r].first, "DecayRanges",
                      "ranges must be sorted and disjoint (range " + std::to_string(r) + ")");
    }
    bounds_ = Bounds(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::decay_ranges"),
                     2 * ranges.size());
    auto host = Kokkos::create_mirror_view(bounds_);
    for (std::size_t r = 0; r < ranges.size(); ++r) {
      host(2 * r) = ranges[r].first;
      host(2 * r + 1) = ranges[r].second;
    }
    Kokkos::deep_copy(exec, bounds_, host);
    exec.fence();
  }

  KOKKOS_INLINE_FUNCTION int count() const { return count_; }
  KOKKOS_INLINE_FUNCTION index_t begin(int r) const { return bounds_(2 * r); }
  KOKKOS_INLINE_FUNCTION index_t end(int r) const { return bounds_(2 * r + 1); }

  // The first range ending after element i (count() when none): binary search.
  KOKKOS_INLINE_FUNCTION int first_ending_after(index_t i) const {
    int lo = 0, hi = count_;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (bounds_(2 * mid + 1) <= i) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  }

  // Whether element i decays: binary search for the last range starting at or before i (tests;
  // the updates walk runs with for_each_decay instead).
  KOKKOS_INLINE_FUNCTION bool contains(index_t i) const {
    int lo = 0, hi = count_;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (bounds_(2 * mid) <= i) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo > 0 && i < bounds_(2 * (lo - 1) + 1);
  }

 private:
  using Bounds = Kokkos::View<index_t*, Kokkos::LayoutRight, typename Exec::memory_space>;
  Bounds bounds_;  // (2 * count): begin0, end0, begin1, end1, ...
  int count_ = 0;
};

namespace detail {
constexpr index_t kDecayChunk = 4096;  // elements per team in for_each_decay
}  // namespace detail

// f(i, decays) for every i < n, where decays says whether element i is inside one of the ranges.
// One team per kDecayChunk elements finds the first range ending after its chunk once, then walks
// the chunk by runs of elements with the same flag: no search per element, a constant flag per
// run (contiguous, vectorisable loops on the host).
template <class Exec, class F>
void for_each_decay(const Exec& exec, const char* name, index_t n, const DecayRanges<Exec>& ranges,
                    const F& f) {
  using detail::kDecayChunk;
  const index_t chunks = (n + kDecayChunk - 1) / kDecayChunk;
  Kokkos::parallel_for(
      name, Kokkos::TeamPolicy<Exec>(exec, static_cast<int>(chunks), Kokkos::AUTO),
      KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const index_t first = static_cast<index_t>(team.league_rank()) * kDecayChunk;
        const index_t last = n - first < kDecayChunk ? n : first + kDecayChunk;
        int r = ranges.first_ending_after(first);
        index_t pos = first;
        while (pos < last) {
          const bool inside = r < ranges.count() && ranges.begin(r) <= pos;
          index_t stop = inside ? ranges.end(r) : (r < ranges.count() ? ranges.begin(r) : last);
          if (stop > last) stop = last;
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, pos, stop),
                               [&](const index_t i) { f(i, inside); });
          if (inside && stop == ranges.end(r)) ++r;
          pos = stop;
        }
      });
}

}  // namespace p2bw::kernels
