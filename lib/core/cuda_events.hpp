// A pool of CUDA events created once and reused (CUDA builds): the compute clock and the kernel
// timer record many intervals per step and read them once, so a steady-state step creates no
// event. take() hands out the next free one; reset() makes all free again once their times are
// read.
#pragma once

#include <Kokkos_Core.hpp>  // first: it defines KOKKOS_ENABLE_CUDA

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "core/error.hpp"

namespace p2bw {

class CudaEventPool {
 public:
  CudaEventPool() = default;
  CudaEventPool(const CudaEventPool&) = delete;
  CudaEventPool& operator=(const CudaEventPool&) = delete;
  ~CudaEventPool() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);  // no checks: may run while unwinding
  }

  cudaEvent_t take() {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      P2BW_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    return events_[used_++];
  }
  void reset() { used_ = 0; }

 private:
  std::vector<cudaEvent_t> events_;  // all created
  std::size_t used_ = 0;             // events_[0, used_) are taken
};

}  // namespace p2bw
#endif
