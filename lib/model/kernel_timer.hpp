// Per-kernel times of a stage's forward and backward (`p2bw bench --kernels`): StageModel marks
// the end of each kernel it launches while a timer is set, and the timer sums the time since the
// previous mark per (phase, kernel). On CUDA builds each mark records a CUDA event on the stage's
// stream (no synchronisation until totals()), so the kernels run back to back as in training; on
// host builds each mark fences and reads the clock. Training sets no timer.
#pragma once

#include <string>
#include <vector>

#include "core/device.hpp"

#include "core/cuda_events.hpp"

namespace p2bw::model {

class KernelTimer {
 public:
  struct Total {
    std::string phase;   // "forward" or "backward", as given to start()
    std::string kernel;  // as given to mark()
    double seconds = 0;
    long calls = 0;
  };

  explicit KernelTimer(const Exec& exec);
  KernelTimer(const KernelTimer&) = delete;
  KernelTimer& operator=(const KernelTimer&) = delete;

  // Starts timing a phase: the first mark's interval starts now.
  void start(const char* phase);
  // The kernels launched since the previous mark (or start) were `kernel`'s.
  void mark(const char* kernel);
  // Stops timing until the next start (kernels launched meanwhile are not counted).
  void stop();
  bool running() const { return phase_ != nullptr; }
  // Waits for the marked kernels and returns the sums per (phase, kernel), in first-mark order.
  std::vector<Total> totals();

 private:
  void add(const char* kernel, double seconds);

  Exec exec_;
  const char* phase_ = nullptr;
  std::vector<Total> totals_;
#ifdef KOKKOS_ENABLE_CUDA
  struct Pending {
    const char* phase;
    const char* kernel;
    cudaEvent_t begin, end;
  };
  CudaEventPool events_;        // the taken ones belong to pending_ and last_
  cudaEvent_t last_ = nullptr;  // the previous mark (or start)
  std::vector<Pending> pending_;
#else
  double last_ = 0;  // seconds on the steady clock
#endif
};

}  // namespace p2bw::model
