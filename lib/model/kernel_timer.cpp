// CUDA-event and host-clock per-kernel timing; see kernel_timer.hpp.
#include "model/kernel_timer.hpp"

#include <chrono>

#include "core/error.hpp"

namespace p2bw::model {

namespace {
#ifndef KOKKOS_ENABLE_CUDA
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
#endif
}  // namespace

KernelTimer::KernelTimer(const Exec& exec) : exec_(exec) {}

void KernelTimer::add(const char* kernel, double seconds) {
  for (Total& t : totals_) {
    if (t.phase == phase_ && t.kernel == kernel) {
      t.seconds += seconds;
      ++t.calls;
      return;
    }
  }
  totals_.push_back({phase_, kernel, seconds, 1});
}

#ifdef KOKKOS_ENABLE_CUDA

void KernelTimer::start(const char* phase) {
  phase_ = phase;
  last_ = events_.take();
  P2BW_CUDA_CHECK(cudaEventRecord(last_, exec_.cuda_stream()));
}

void KernelTimer::mark(const char* kernel) {
  if (phase_ == nullptr) return;
  const cudaEvent_t end = events_.take();
  P2BW_CUDA_CHECK(cudaEventRecord(end, exec_.cuda_stream()));
  pending_.push_back({phase_, kernel, last_, end});
  last_ = end;
}

void KernelTimer::stop() {
  phase_ = nullptr;
}

std::vector<KernelTimer::Total> KernelTimer::totals() {
  if (!pending_.empty()) P2BW_CUDA_CHECK(cudaEventSynchronize(pending_.back().end));
  const char* running = phase_;
  for (const Pending& p : pending_) {
    float ms = 0;
    P2BW_CUDA_CHECK(cudaEventElapsedTime(&ms, p.begin, p.end));
    phase_ = p.phase;
    add(p.kernel, 1e-3 * ms);
  }
  phase_ = running;
  pending_.clear();
  events_.reset();
  if (phase_ != nullptr) start(phase_);  // the events are reused: a running phase restarts
  return totals_;
}

#else

void KernelTimer::start(const char* phase) {
  exec_.fence();
  phase_ = phase;
  last_ = now_s();
}

void KernelTimer::mark(const char* kernel) {
  if (phase_ == nullptr) return;
  exec_.fence();
  const double now = now_s();
  add(kernel, now - last_);
  last_ = now;
}

void KernelTimer::stop() {
  phase_ = nullptr;
}

std::vector<KernelTimer::Total> KernelTimer::totals() {
  return totals_;
}

#endif

}  // namespace p2bw::model
