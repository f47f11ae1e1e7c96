// A point in the device's queue: record(exec) marks the work queued on exec so far, wait()
// returns once that work is done. Host memory that queued copies read (a staging buffer) can so
// be refilled without draining the queue. CUDA builds: an event without timing, recorded on
// exec's stream. Other builds: wait() fences the recorded instance (on hosts the work is done
// when it is queued, so that costs nothing).
#pragma once

#include <type_traits>
#include <utility>

#include "core/device.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>

#include "core/error.hpp"
#endif

namespace p2bw {

class StreamMark {
 public:
  StreamMark() {
#ifdef KOKKOS_ENABLE_CUDA
    P2BW_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
#endif
  }
  StreamMark(const StreamMark&) = delete;
  StreamMark& operator=(const StreamMark&) = delete;
  StreamMark(StreamMark&& other) noexcept {
    swap(other);
  }
  StreamMark& operator=(StreamMark&& other) noexcept {
    swap(other);
    return *this;
  }
  ~StreamMark() {
#ifdef KOKKOS_ENABLE_CUDA
    if (event_) cudaEventDestroy(event_);  // no check: may run while unwinding
#endif
  }

  // Marks the work queued on exec until now.
  void record(const Exec& exec) {
#ifdef KOKKOS_ENABLE_CUDA
    static_assert(std::is_same<Exec, Kokkos::Cuda>::value, "CUDA builds compute on Kokkos::Cuda");
    P2BW_CUDA_CHECK(cudaEventRecord(event_, exec.cuda_stream()));
#else
    exec_ = exec;
#endif
  }

  // Returns once the marked work is done (at once if nothing was marked yet).
  void wait() const {
#ifdef KOKKOS_ENABLE_CUDA
    P2BW_CUDA_CHECK(cudaEventSynchronize(event_));
#elif KOKKOS_VERSION >= 30600
    exec_.fence(kWaitFence);  // named, so that the tests that count fences can tell it
#else
    exec_.fence();
#endif
  }
  // The name of wait()'s fence on host builds with Kokkos >= 3.6 (CUDA builds wait on an event).
  static constexpr const char* kWaitFence = "p2bw::StreamMark::wait";

 private:
  void swap(StreamMark& other) noexcept {
#ifdef KOKKOS_ENABLE_CUDA
    std::swap(event_, other.event_);
#else
    std::swap(exec_, other.exec_);
#endif
  }

#ifdef KOKKOS_ENABLE_CUDA
  cudaEvent_t event_ = nullptr;
#else
  Exec exec_;
#endif
};

}  // namespace p2bw
