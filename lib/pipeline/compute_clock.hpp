// Times a stage's compute without stopping the host after every action. On CUDA builds each
// interval is a pair of CUDA events recorded on the stage's stream, read once per step (one
// synchronisation per step instead of a fence per action); on host builds, where kernels have
// finished when their call returns, the trainer's clock is read at once, as before.
#pragma once

#include <functional>
#include <vector>

#include "core/cuda_events.hpp"
#include "core/device.hpp"
#include "schedule/schedule.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#endif

namespace p2bw::pipeline {

class ComputeClock {
 public:
  struct Interval {
    schedule::ActionKind kind;
    int mb;
    int version;
    double start;  // seconds on the trainer's clock
    double end;
  };
  // `now` reads the trainer's clock; `sink` receives every interval once its times are known.
  ComputeClock(const Exec& exec, std::function<double()> now,
               std::function<void(const Interval&)> sink);
  ~ComputeClock();
  ComputeClock(const ComputeClock&) = delete;
  ComputeClock& operator=(const ComputeClock&) = delete;

  // Before the interval's kernels are launched.
  void begin();
  // After they are launched: the interval ends when they finish.
  void end(schedule::ActionKind kind, int mb, int version);
  // Hands the intervals since the last call to the sink (on CUDA after waiting for the last one's
  // kernels) and returns their total length in seconds.
  double collect();

 private:
  Exec exec_;
  std::function<double()> now_;
  std::function<void(const Interval&)> sink_;
  double total_s_ = 0;  // host builds: the intervals ended since the last collect()
  double start_ = 0;
#ifdef KOKKOS_ENABLE_CUDA
  struct Pending {
    schedule::ActionKind kind;
    int mb;
    int version;
    cudaEvent_t start;
    cudaEvent_t end;
  };
  void anchor();          // records an event on the idle stream and the host time it happened
  CudaEventPool events_;  // reused every step: the taken ones belong to pending_ and open_
  std::vector<Pending> pending_;
  cudaEvent_t open_ = nullptr;  // the start of the interval begun and not yet ended
  cudaEvent_t anchor_ = nullptr;
  double anchor_s_ = 0;  // the trainer's clock when anchor_ completed
#endif
};

}  // namespace p2bw::pipeline
