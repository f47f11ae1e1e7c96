// CUDA-event and host-clock timing of a stage's compute; see compute_clock.hpp.
#include "pipeline/compute_clock.hpp"

#include <utility>

#include "core/error.hpp"

namespace p2bw::pipeline {

ComputeClock::ComputeClock(const Exec& exec, std::function<double()> now,
                           std::function<void(const Interval&)> sink)
    : exec_(exec), now_(std::move(now)), sink_(std::move(sink)) {
#ifdef KOKKOS_ENABLE_CUDA
  P2BW_CUDA_CHECK(cudaEventCreate(&anchor_));
#endif
}

ComputeClock::~ComputeClock() {
#ifdef KOKKOS_ENABLE_CUDA
  cudaEventDestroy(anchor_);  // no checks: this may run while an error unwinds
#endif
}

#ifdef KOKKOS_ENABLE_CUDA

void ComputeClock::anchor() {
  P2BW_CUDA_CHECK(cudaEventRecord(anchor_, exec_.cuda_stream()));
  P2BW_CUDA_CHECK(cudaEventSynchronize(anchor_));
  anchor_s_ = now_();
}

void ComputeClock::begin() {
  if (pending_.empty()) anchor();  // the first interval since collect(): the stream is idle
  open_ = events_.take();
  P2BW_CUDA_CHECK(cudaEventRecord(open_, exec_.cuda_stream()));
}

void ComputeClock::end(schedule::ActionKind kind, int mb, int version) {
  P2BW_ASSERT(open_ != nullptr, "a compute interval ended that did not begin");
  const cudaEvent_t stop = events_.take();
  P2BW_CUDA_CHECK(cudaEventRecord(stop, exec_.cuda_stream()));
  pending_.push_back({kind, mb, version, open_, stop});
  open_ = nullptr;
}

double ComputeClock::collect() {
  P2BW_ASSERT(open_ == nullptr, "collecting the compute times inside an interval");
  double total = 0;
  if (!pending_.empty()) P2BW_CUDA_CHECK(cudaEventSynchronize(pending_.back().end));
  for (const Pending& p : pending_) {
    float start_ms = 0, end_ms = 0;
    P2BW_CUDA_CHECK(cudaEventElapsedTime(&start_ms, anchor_, p.start));
    P2BW_CUDA_CHECK(cudaEventElapsedTime(&end_ms, anchor_, p.end));
    const Interval interval{p.kind, p.mb, p.version, anchor_s_ + 1e-3 * start_ms,
                            anchor_s_ + 1e-3 * end_ms};
    total += interval.end - interval.start;
    sink_(interval);
  }
  pending_.clear();
  events_.reset();
  return total;
}

#else  // host builds: kernels are done when their call returns

void ComputeClock::begin() {
  start_ = now_();
}

void ComputeClock::end(schedule::ActionKind kind, int mb, int version) {
  const Interval interval{kind, mb, version, start_, now_()};
  total_s_ += interval.end - interval.start;
  sink_(interval);
}

double ComputeClock::collect() {
  const double total = total_s_;
  total_s_ = 0;
  return total;
}

#endif

}  // namespace p2bw::pipeline
