// A pool of CUDA events created once and reused (CUDA builds), so that a steady-state step
// creates no event. take() hands out a free one; give_back() frees one (the NCCL transport's
// completions), reset() all (the compute clock and the kernel timer, once their times are read).
#pragma once

#include <Kokkos_Core.hpp>  // first: it defines KOKKOS_ENABLE_CUDA

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>

#include <vector>

#include "core/error.hpp"

namespace p2bw {

class CudaEventPool {
 public:
  // Events made with these cudaEventCreateWithFlags flags (cudaEventDisableTiming where no time
  // is read: cheaper to record and wait for).
  explicit CudaEventPool(unsigned flags = cudaEventDefault) : flags_(flags) {}
  CudaEventPool(const CudaEventPool&) = delete;
  CudaEventPool& operator=(const CudaEventPool&) = delete;
  ~CudaEventPool() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);  // no checks: may run while unwinding
  }

  // A free event, created when none is.
  cudaEvent_t take() {
    if (free_.empty()) {
      cudaEvent_t e = nullptr;
      P2BW_CUDA_CHECK(cudaEventCreateWithFlags(&e, flags_));
      events_.push_back(e);
      return e;
    }
    const cudaEvent_t e = free_.back();
    free_.pop_back();
    return e;
  }
  // One taken event free again (its owner is done with it).
  void give_back(cudaEvent_t e) { free_.push_back(e); }
  // Every event free again.
  void reset() { free_.assign(events_.begin(), events_.end()); }

 private:
  unsigned flags_;
  std::vector<cudaEvent_t> events_;  // all created
  std::vector<cudaEvent_t> free_;    // not taken
};

}  // namespace p2bw
#endif
