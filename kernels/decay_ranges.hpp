// Which elements of a flat parameter buffer get weight decay, as sorted, disjoint [begin, end)
// ranges (matrices decay; LayerNorm parameters and biases do not). Shared by AdamW and SGD.
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

  int count() const { return count_; }

  // Whether element i decays: binary search for the last range starting at or before i.
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

}  // namespace p2bw::kernels
