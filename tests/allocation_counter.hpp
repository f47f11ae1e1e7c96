// Counts Kokkos allocations through Kokkos Tools' allocation hook (every View and Kokkos' own
// scratch, in every memory space) while a counter lives, with their labels, for the tests that
// check that training allocates nothing after its first step.
#pragma once

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace p2bw::testing {

class AllocationCounter {
 public:
  AllocationCounter() {
    labels().clear();
    Kokkos::Tools::Experimental::set_allocate_data_callback(&record);
  }
  ~AllocationCounter() { Kokkos::Tools::Experimental::set_allocate_data_callback(nullptr); }
  AllocationCounter(const AllocationCounter&) = delete;
  AllocationCounter& operator=(const AllocationCounter&) = delete;

  // The labels of the allocations so far, in order.
  const std::vector<std::string>& allocations() const { return labels(); }
  std::string summary() const {
    std::string text;
    for (const std::string& label : labels()) text += (text.empty() ? "" : ", ") + label;
    return text;
  }

 private:
  static std::vector<std::string>& labels() {
    static std::vector<std::string> seen;
    return seen;
  }
  static void record(const Kokkos_Profiling_SpaceHandle /*space*/, const char* label,
                     const void* /*ptr*/, const std::uint64_t /*size*/) {
    labels().emplace_back(label ? label : "");
  }
};

}  // namespace p2bw::testing
