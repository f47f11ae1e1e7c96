// Counts Kokkos allocations through Kokkos Tools' allocation hooks (every View and Kokkos' own
// scratch, in every memory space) while a counter lives: their labels, for the tests that check
// that training allocates nothing after its first step, and the bytes they hold, live and at
// their high water, for the tests that hold the executor's memory accounting to the allocator.
#pragma once

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace p2bw::testing {

class AllocationCounter {
 public:
  AllocationCounter() {
    state() = State{};
    Kokkos::Tools::Experimental::set_allocate_data_callback(&allocated);
    Kokkos::Tools::Experimental::set_deallocate_data_callback(&deallocated);
  }
  ~AllocationCounter() {
    Kokkos::Tools::Experimental::set_allocate_data_callback(nullptr);
    Kokkos::Tools::Experimental::set_deallocate_data_callback(nullptr);
  }
  AllocationCounter(const AllocationCounter&) = delete;
  AllocationCounter& operator=(const AllocationCounter&) = delete;

  // The labels of the allocations so far, in order.
  const std::vector<std::string>& allocations() const { return state().labels; }
  std::string summary() const {
    std::string text;
    for (const std::string& label : state().labels) text += (text.empty() ? "" : ", ") + label;
    return text;
  }
  // Bytes allocated while the counter lived and not yet freed (negative when more of what was
  // allocated before it was freed), and the most that ever were.
  std::int64_t live_bytes() const { return state().live; }
  std::int64_t peak_bytes() const { return state().peak; }

 private:
  struct State {
    std::vector<std::string> labels;
    std::int64_t live = 0;
    std::int64_t peak = 0;
  };
  static State& state() {
    static State seen;
    return seen;
  }
  static void allocated(const Kokkos_Profiling_SpaceHandle /*space*/, const char* label,
                        const void* /*ptr*/, const std::uint64_t size) {
    State& s = state();
    s.labels.emplace_back(label ? label : "");
    s.live += static_cast<std::int64_t>(size);
    s.peak = std::max(s.peak, s.live);
  }
  static void deallocated(const Kokkos_Profiling_SpaceHandle /*space*/, const char* /*label*/,
                          const void* /*ptr*/, const std::uint64_t size) {
    state().live -= static_cast<std::int64_t>(size);
  }
};

}  // namespace p2bw::testing
