// NCCL transport and collectives; see nccl.hpp.
#include "comm/nccl.hpp"

#include <cuda_bf16.h>  // before nccl.h: older NCCL headers declare ncclBfloat16 only after it
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <utility>

#include "comm/pending.hpp"
#include "core/cuda_events.hpp"
#include "core/error.hpp"

namespace p2bw::comm {

namespace {

// The compute stream of an execution space instance (the default stream on non-CUDA spaces,
// which only a syntax check of this file ever sees).
cudaStream_t stream_of(const Exec& exec) {
#ifdef KOKKOS_ENABLE_CUDA
  return exec.cuda_stream();
#else
  (void)exec;
  return nullptr;
#endif
}

// Our communicators are non-blocking (config.blocking = 0), so that none can hang: an NCCL call
// on one may return ncclInProgress while it is still being set up or enqueued. This waits until
// the communicator has settled (its work is then on the stream), throws for an NCCL error, and
// after timeout_s ends the run with one line naming the stage and the action. The owner of the
// communicator aborts it (once) when it is destroyed after such an error.
void settle(ncclResult_t result, ncclComm_t comm, double timeout_s, int stage,
            const std::string& what) {
  if (result != ncclInProgress) P2BW_NCCL_CHECK(result);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    ncclResult_t state = ncclInProgress;
    P2BW_NCCL_CHECK(ncclCommGetAsyncError(comm, &state));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) P2BW_NCCL_CHECK(state);
    if (std::chrono::steady_clock::now() > deadline)
      throw RunError(
          fmt::format("stage {}: {}: NCCL made no progress for {} s (pipeline.timeout_s)", stage,
                      what, timeout_s));
    std::this_thread::yield();
  }
}

// An NCCL communicator over the ranks of an MPI communicator (its rank 0 makes the id), `what`
// naming it in errors. Neither step can hang: the id travels by a non-blocking broadcast waited on
// with the deadline, and the non-blocking communicator settles within it.
ncclComm_t make_comm(MPI_Comm comm, double timeout_s, int stage, const std::string& what) {
  int rank = 0, size = 0;
  P2BW_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  P2BW_MPI_CHECK(MPI_Comm_size(comm, &size));
  ncclUniqueId id;
  if (rank == 0) P2BW_NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_Request request;
  P2BW_MPI_CHECK(MPI_Ibcast(&id, sizeof id, MPI_BYTE, 0, comm, &request));
  wait_with_deadline(request, timeout_s, stage, fmt::format("the NCCL id of {}", what));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t nccl = nullptr;
  try {
    settle(
        ncclCommInitRankConfig(&nccl, size, id, rank, &config), nccl, timeout_s, stage,
        fmt::format("making the NCCL communicator of {} (does every rank reach its GPU?)", what));
  } catch (...) {
    if (nccl) ncclCommAbort(nccl);  // no owner yet
    throw;
  }
  return nccl;
}

// The events of a transport or of the collectives, reused (a steady-state step creates none): one
// per operation in flight, marking its completion on the communication stream, and `ready_`,
// which orders that stream after the compute stream (cudaStreamWaitEvent waits for the record
// made just before it, so one event serves every post).
class StreamEvents {
 public:
  StreamEvents() : ready_(pool_.take()) {}

  // Makes `stream` wait for the work queued on `compute` so far (the kernels that wrote, or still
  // read, a buffer a message or reduction is about to use).
  void order_after(cudaStream_t compute, cudaStream_t stream) {
    P2BW_CUDA_CHECK(cudaEventRecord(ready_, compute));
    P2BW_CUDA_CHECK(cudaStreamWaitEvent(stream, ready_, 0));
  }
  // An event recorded on `stream` now: the operation just queued there is done when it is.
  cudaEvent_t record(cudaStream_t stream) {
    const cudaEvent_t event = pool_.take();
    P2BW_CUDA_CHECK(cudaEventRecord(event, stream));
    return event;
  }
  // An event from record() that is no longer waited for.
  void finished(cudaEvent_t event) { pool_.give_back(event); }

 private:
  CudaEventPool pool_{cudaEventDisableTiming};
  cudaEvent_t ready_;
};

// Whether `event` completed; throws for a CUDA error or an asynchronous NCCL error.
bool completed(cudaEvent_t event, ncclComm_t comm) {
  const cudaError_t state = cudaEventQuery(event);
  if (state == cudaSuccess) return true;
  if (state != cudaErrorNotReady) P2BW_CUDA_CHECK(state);
  ncclResult_t async = ncclSuccess;
  P2BW_NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
  if (async != ncclInProgress) P2BW_NCCL_CHECK(async);
  return false;
}

// Polls `event` until it completes (true) or timeout_s passes (false: the owner then marks its
// communicators for abort, so that no kernel of them stays behind).
bool poll(cudaEvent_t event, ncclComm_t comm, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (!completed(event, comm)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// f(), setting `aborted` when it throws (an NCCL or CUDA error), so that the owner aborts its
// communicators instead of destroying them.
template <class F>
bool marking_abort(bool& aborted, const F& f) {
  try {
    return f();
  } catch (...) {
    aborted = true;
    throw;
  }
}

cudaStream_t make_stream() {
  cudaStream_t stream = nullptr;
  P2BW_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

// A message goes from and into its buffer on the device, in the buffer's type (a bf16 run's
// buffers are bf16: ncclBfloat16, 2 bytes per value), on the communication stream ordered after
// the compute stream's kernels.
class NcclTransport : public Transport {
 public:
  NcclTransport(const ProcessGrid& grid, double timeout_s, const Exec& compute)
      : comm_(make_comm(grid.world(), timeout_s, grid.stage(), "the pipeline")),
        stream_(make_stream()),
        compute_(stream_of(compute)),
        timeout_s_(timeout_s),
        stage_(grid.stage()) {}

  ~NcclTransport() override {
    // After a timeout or an NCCL error the communicator is aborted (its kernels may never end);
    // otherwise a run has ended with wait_all. The events go with events_.
    if (aborted_)
      ncclCommAbort(comm_);
    else
      ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }

  int post_send(const Message& message) override {
    events_.order_after(compute_, stream_);
    settled(ncclSend(message.buffer.data(), count(message), type(message), message.peer, comm_,
                     stream_),
            message, "send");
    return add(message, true);
  }

  int post_receive(const Message& message) override {
    // Kernels may still read the buffer's previous contents.
    events_.order_after(compute_, stream_);
    settled(ncclRecv(message.buffer.data(), count(message), type(message), message.peer, comm_,
                     stream_),
            message, "receive");
    return add(message, false);
  }

  // One group: NCCL progresses both halves together, so two exchanges facing each other
  // complete (the checker's exchange rule).
  std::pair<int, int> post_exchange(const Message& send, const Message& receive) override {
    events_.order_after(compute_, stream_);
    P2BW_NCCL_CHECK(ncclGroupStart());
    // Inside a group the calls only record (a non-blocking communicator may say ncclInProgress).
    for (const ncclResult_t recorded :
         {ncclSend(send.buffer.data(), count(send), type(send), send.peer, comm_, stream_),
          ncclRecv(receive.buffer.data(), count(receive), type(receive), receive.peer, comm_,
                   stream_)})
      if (recorded != ncclInProgress) P2BW_NCCL_CHECK(recorded);
    // The group's end enqueues them.
    settled(ncclGroupEnd(), send, "exchange (send and receive)");
    const int sent = add(send, true);
    return {sent, add(receive, false)};
  }

  void wait(int handle, const std::string& what) override {
    const Operation& op = pending_.at(handle);
    if (!noting_errors([&] { return poll(op.done, comm_, timeout_s_); })) {
      aborted_ = true;
      throw RunError(stalled_transfer(stage_, what, timeout_s_, op.message, op.send));
    }
    finish(handle);
  }

  bool test(int handle) override {
    if (!noting_errors([&] { return completed(pending_.at(handle).done, comm_); })) return false;
    finish(handle);
    return true;
  }

  void wait_all(const std::string& what) override {
    while (!pending_.empty()) wait(pending_.oldest(), what);
  }

 private:
  struct Operation {
    Message message;
    bool send = false;
    cudaEvent_t done = nullptr;  // recorded on the communication stream after the operation
  };

  // A buffer's element type on the wire: bf16 buffers as ncclBfloat16 (2 bytes per value).
  static ncclDataType_t type(const Message& message) {
    return message.buffer.is_bf16() ? ncclBfloat16 : ncclFloat;
  }
  static size_t count(const Message& message) { return static_cast<size_t>(message.buffer.size()); }
  // settle() for a call posting `message`; the communicator is aborted when it fails.
  void settled(ncclResult_t result, const Message& message, const char* kind) {
    noting_errors([&] {
      settle(result, comm_, timeout_s_, stage_,
             fmt::format("posting the {} of the {} of microbatch {} with rank {}", kind,
                         to_string(message.direction), message.microbatch, message.peer));
      return true;
    });
  }
  int add(const Message& message, bool send) {
    return pending_.add([&](Operation& op) {
      op.message = message;
      op.send = send;
      op.done = events_.record(stream_);
    });
  }
  void finish(int handle) {
    Operation& op = pending_.at(handle);
    events_.finished(op.done);
    op.message.buffer = StoreView();
    pending_.remove(handle);
  }

  StreamEvents events_;  // first: destroyed after the stream
  ncclComm_t comm_;
  cudaStream_t stream_;   // communication stream
  cudaStream_t compute_;  // the executor's compute stream
  double timeout_s_;
  int stage_;
  template <class F>
  bool noting_errors(const F& f) {
    return marking_abort(aborted_, f);
  }
  bool aborted_ = false;
  PendingOps<Operation> pending_;
};

class NcclCollectives : public Collectives {
 public:
  NcclCollectives(const ProcessGrid& grid, double timeout_s, const Exec& compute)
      : grid_(grid), stream_(make_stream()), compute_(stream_of(compute)), timeout_s_(timeout_s) {
    for (const Group group : {Group::world, Group::replicas, Group::tied}) {
      const MPI_Comm c = group_comm(grid_, group);
      if (c != MPI_COMM_NULL)
        comms_[group] = make_comm(c, timeout_s, grid.stage(), describe(group));
    }
  }

  ~NcclCollectives() override {
    for (auto& entry : comms_) {
      if (aborted_)
        ncclCommAbort(entry.second);
      else
        ncclCommDestroy(entry.second);
    }
    cudaStreamDestroy(stream_);
  }

  int post_sum(FloatView data, Group group, const std::string& what) override {
    return post(data.data(), data.extent(0), ncclFloat, group, what);
  }
  int post_sum(DoubleView data, Group group, const std::string& what) override {
    return post(data.data(), data.extent(0), ncclDouble, group, what);
  }

  bool test(int handle) override {
    const Reduction& r = pending_.at(handle);
    if (!noting_errors([&] { return completed(r.done, comm(r.group)); })) return false;
    finish(handle);
    return true;
  }

  void wait(int handle) override {
    const Reduction& r = pending_.at(handle);
    if (!noting_errors([&] { return poll(r.done, comm(r.group), timeout_s_); })) {
      aborted_ = true;
      throw RunError(stalled_reduction(grid_, r.group, r.what, timeout_s_));
    }
    finish(handle);
  }

  void barrier(Group group, const std::string& what) override {
    const MPI_Comm c = group_comm(grid_, group);
    P2BW_ASSERT(c != MPI_COMM_NULL, "a barrier over a group this rank is not in");
    MPI_Request request;
    P2BW_MPI_CHECK(MPI_Ibarrier(c, &request));
    wait_with_deadline(request, timeout_s_, grid_.stage(),
                       fmt::format("{}: barrier over {}", what, describe(group)));
  }

  bool pending() const override { return !pending_.empty(); }

 private:
  struct Reduction {
    Group group = Group::world;
    std::string what;
    cudaEvent_t done = nullptr;
  };

  ncclComm_t comm(Group group) const {
    auto it = comms_.find(group);
    P2BW_ASSERT(it != comms_.end(), "a collective over a group this rank is not in");
    return it->second;
  }

  std::string describe(Group group) const { return comm::describe(grid_, group); }

  int post(void* data, size_t count, ncclDataType_t type, Group group, const std::string& what) {
    events_.order_after(compute_, stream_);
    noting_errors([&] {
      settle(ncclAllReduce(data, data, count, type, ncclSum, comm(group), stream_), comm(group),
             timeout_s_, grid_.stage(), fmt::format("posting {} over {}", what, describe(group)));
      return true;
    });
    return pending_.add([&](Reduction& r) {
      r.group = group;
      r.what = what;
      r.done = events_.record(stream_);
    });
  }

  void finish(int handle) {
    events_.finished(pending_.at(handle).done);
    pending_.remove(handle);
  }

  StreamEvents events_;  // first: destroyed after the stream
  const ProcessGrid& grid_;
  std::map<Group, ncclComm_t> comms_;
  cudaStream_t stream_;   // one stream for every group: reductions complete in posting order
  cudaStream_t compute_;  // the executor's compute stream
  double timeout_s_;
  template <class F>
  bool noting_errors(const F& f) {
    return marking_abort(aborted_, f);
  }
  bool aborted_ = false;
  PendingOps<Reduction> pending_;
};

}  // namespace

std::unique_ptr<Transport> make_nccl_transport(const ProcessGrid& grid, double timeout_s,
                                               const Exec& compute) {
  return std::make_unique<NcclTransport>(grid, timeout_s, compute);
}

std::unique_ptr<Collectives> make_nccl_collectives(const ProcessGrid& grid, double timeout_s,
                                                   const Exec& compute) {
  return std::make_unique<NcclCollectives>(grid, timeout_s, compute);
}

}  // namespace p2bw::comm
