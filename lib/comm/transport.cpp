// MPI transport with host staging, the bf16 wire and deadlines; see transport.hpp.
#include "comm/transport.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <thread>
#include <type_traits>
#include <vector>

#include "comm/staging.hpp"
#include "core/error.hpp"
#include "kernels/bf16_pack.hpp"

namespace p2bw::comm {

const char* to_string(Direction direction) {
  switch (direction) {
    case Direction::activation:
      return "activation";
    case Direction::gradient:
      return "gradient";
    case Direction::evaluation:
      return "evaluation activation";
  }
  return "?";
}

const char* to_string(Wire wire) {
  return wire == Wire::bf16 ? "bf16" : "fp32";
}

std::string stalled_transfer(int stage, const std::string& what, double timeout_s,
                             const Message& message, bool send) {
  return fmt::format(
      "stage {}: {}: no progress for {} s waiting to {} the {} of microbatch {} {} rank {} "
      "(pipeline.timeout_s)",
      stage, what, timeout_s, send ? "send" : "receive", to_string(message.direction),
      message.microbatch, send ? "to" : "from", message.peer);
}

int bytes_per_value(Wire wire) {
  return wire == Wire::bf16 ? 2 : 4;
}

Wire wire_for(config::Precision precision) {
  return precision == config::Precision::bf16 ? Wire::bf16 : Wire::fp32;
}

namespace {

// Tags repeat after this many microbatches (far beyond d in flight); the largest tag stays below
// 32767, the least MPI_TAG_UB the standard allows.
constexpr int kTagMicrobatches = 1 << 13;
constexpr int kDirections = 3;

int tag_of(int microbatch, Direction direction) {
  return (microbatch % kTagMicrobatches) * kDirections + static_cast<int>(direction);
}

// Tests `request` until it completes; false when timeout_s passes first. MPI advances large
// messages and non-blocking collectives only inside MPI calls, chunk by chunk, so any pause
// between tests slows every transfer down (with a pause of up to 200 us, the demo's 3.5 MB
// data-parallel all-reduce step took 12 ms instead of 3.5 ms on two ranks of one VM). It spins as
// MPI_Wait does, yielding the core between tests so that ranks sharing cores still get to compute.
bool poll(MPI_Request& request, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  int done = 0;
  for (std::uint64_t tests = 0;; ++tests) {
    P2BW_MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) return true;
    if (tests % 64 == 0 && std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
}

// Messages on a fp32 wire go from their float buffers (staged on CUDA builds, the buffer itself
// on host builds). On a bf16 wire a send packs its buffer into 16-bit values on the compute
// instance (on CUDA builds into a device buffer, then copied to the pinned staging: half the PCIe
// bytes; on host builds straight into the buffer MPI sends) and a completed receive unpacks them
// into its float buffer. Every staging and packing buffer comes from a pool: none is allocated
// once each message size has been in flight as often at once.
class MpiTransport : public Transport {
 public:
  MpiTransport(MPI_Comm world, double timeout_s, int stage, Wire wire, const Exec& compute)
      : world_(world), timeout_s_(timeout_s), stage_(stage), wire_(wire), compute_(compute) {}

  ~MpiTransport() override {
    if (pending_.empty()) return;
    // Only on an error path (a run ends with wait_all): cancel what is in flight and keep its
    // staging buffers alive on purpose, since a transfer already matched may still write into
    // them until MPI_Abort ends the process.
    auto* kept = new std::vector<Operation>();
    for (auto& [handle, op] : pending_) {
      MPI_Cancel(&op.request);
      kept->push_back(op);
    }
  }

  int post_send(const Message& message) override {
    Operation op{message, {}, {}, true, MPI_REQUEST_NULL};
    if (wire_ == Wire::bf16) {
      op.packed = packed_.take(message.buffer.extent(0));
      pack(op.packed, message);  // after the kernels that wrote the buffer
      P2BW_MPI_CHECK(MPI_Isend(op.packed.data(), count(message), MPI_UINT16_T, message.peer,
                               tag(message), world_, &op.request));
    } else {
      op.staging = staging_.take(message.buffer);
      // Also orders the send after the kernels that wrote the buffer.
      if (StagingPool<float>::copies) Kokkos::deep_copy(op.staging, message.buffer);
      P2BW_MPI_CHECK(MPI_Isend(op.staging.data(), count(message), MPI_FLOAT, message.peer,
                               tag(message), world_, &op.request));
    }
    return add(std::move(op));
  }

  int post_receive(const Message& message) override {
    Operation op{message, {}, {}, false, MPI_REQUEST_NULL};
    if (wire_ == Wire::bf16) {
      op.packed = packed_.take(message.buffer.extent(0));
      P2BW_MPI_CHECK(MPI_Irecv(op.packed.data(), count(message), MPI_UINT16_T, message.peer,
                               tag(message), world_, &op.request));
    } else {
      op.staging = staging_.take(message.buffer);
      P2BW_MPI_CHECK(MPI_Irecv(op.staging.data(), count(message), MPI_FLOAT, message.peer,
                               tag(message), world_, &op.request));
    }
    return add(std::move(op));
  }

  // MPI needs no grouping: both halves are non-blocking and matched by tag.
  std::pair<int, int> post_exchange(const Message& send, const Message& receive) override {
    const int sent = post_send(send);
    return {sent, post_receive(receive)};
  }

  void wait(int handle, const std::string& what) override {
    auto it = pending_.find(handle);
    P2BW_ASSERT(it != pending_.end(), "waiting for an unknown transfer");
    Operation& op = it->second;
    if (!poll(op.request, timeout_s_))
      throw RunError(stalled_transfer(stage_, what, timeout_s_, op.message, op.send));
    finish(it);
  }

  bool test(int handle) override {
    auto it = pending_.find(handle);
    P2BW_ASSERT(it != pending_.end(), "testing an unknown transfer");
    int done = 0;
    P2BW_MPI_CHECK(MPI_Test(&it->second.request, &done, MPI_STATUS_IGNORE));
    if (!done) return false;
    finish(it);
    return true;
  }

  void wait_all(const std::string& what) override {
    while (!pending_.empty()) wait(pending_.begin()->first, what);
  }

 private:
  using Packed = BufferPool<kernels::bf16, StagingSpace>::Buffer;  // (n) what MPI sends, bf16
  using DevicePacked = BufferPool<kernels::bf16, Memory>::Buffer;  // (n) CUDA builds: packing's
  // Whether a packed buffer of type V is not in device memory (so is staged through it).
  // A function, not a static variable template: nvcc 13 warns that such a member is "referenced
  // but not defined" (#114-D), although C++17 makes it inline.
  template <class V>
  static constexpr bool staged() {
    return !std::is_same<typename V::memory_space, Memory>::value;
  }

  struct Operation {
    Message message;
    StagingPool<float>::Buffer staging;  // fp32 wire: the buffer itself on host builds
    Packed packed;                       // bf16 wire
    bool send;
    MPI_Request request;
  };
  int add(Operation op) {
    pending_.emplace(next_, std::move(op));
    return next_++;
  }
  static int count(const Message& message) { return static_cast<int>(message.buffer.extent(0)); }
  static int tag(const Message& message) { return tag_of(message.microbatch, message.direction); }

  // The message's floats packed into `packed` as bf16; throws when one was not bf16-exact.
  // (Templates on the buffer's type so that only this build's branch is compiled: a CUDA build
  // cannot hand the pinned buffer to a device kernel.)
  template <class PackedView>
  void pack(const PackedView& packed, const Message& message) {
    const kernels::index_t n = count(message);
    kernels::index_t rounded = 0;
    if constexpr (staged<PackedView>()) {
      const DevicePacked device = device_packed_.take(static_cast<std::size_t>(n));
      rounded = kernels::pack_bf16(compute_, device, message.buffer, n);
      Kokkos::deep_copy(packed, device);
      device_packed_.give_back(device);
    } else {
      rounded = kernels::pack_bf16(compute_, packed, message.buffer, n);
    }
    if (rounded != 0)
      P2BW_INTERNAL_ERROR(fmt::format(
          "stage {}: {} of the {} values of the {} of microbatch {} to rank {} are not bf16 "
          "values: "
          "the bf16 wire would round them (a bf16 run's messages are rounded where they are "
          "written)",
          stage_, rounded, n, to_string(message.direction), message.microbatch, message.peer));
  }

  // A received bf16 message into its float buffer (queued on the compute instance, so before
  // the kernels that read it).
  template <class PackedView>
  void unpack(const PackedView& packed, const Message& message) {
    const kernels::index_t n = count(message);
    if constexpr (staged<PackedView>()) {
      const DevicePacked device = device_packed_.take(static_cast<std::size_t>(n));
      Kokkos::deep_copy(device, packed);
      kernels::unpack_bf16(compute_, message.buffer, device, n);
      device_packed_.give_back(device);  // its next use is ordered after on the same instance
    } else {
      kernels::unpack_bf16(compute_, message.buffer, packed, n);
      compute_.fence();  // the packed buffer goes back to the pool and to MPI
    }
  }

  // A completed operation: a receive's data to its device buffer, the staging back to the pool.
  void finish(std::map<int, Operation>::iterator it) {
    Operation& op = it->second;
    if (wire_ == Wire::bf16) {
      if (!op.send) unpack(op.packed, op.message);
      packed_.give_back(op.packed);
    } else {
      if (StagingPool<float>::copies && !op.send) Kokkos::deep_copy(op.message.buffer, op.staging);
      staging_.give_back(op.staging);
    }
    pending_.erase(it);
  }

  MPI_Comm world_;
  double timeout_s_;
  int stage_;
  Wire wire_;
  Exec compute_;
  std::map<int, Operation> pending_;
  StagingPool<float> staging_;                       // fp32 wire
  BufferPool<kernels::bf16, StagingSpace> packed_;   // bf16 wire: what MPI sends and receives
  BufferPool<kernels::bf16, Memory> device_packed_;  // bf16 wire, CUDA builds: packing's
  int next_ = 0;
};

}  // namespace

void wait_with_deadline(MPI_Request& request, double timeout_s, int stage,
                        const std::string& what) {
  if (!poll(request, timeout_s))
    throw RunError(fmt::format("stage {}: {}: no progress for {} s (pipeline.timeout_s)", stage,
                               what, timeout_s));
}

std::unique_ptr<Transport> make_mpi_transport(MPI_Comm world, double timeout_s, int stage,
                                              Wire wire, const Exec& compute) {
  return std::make_unique<MpiTransport>(world, timeout_s, stage, wire, compute);
}

}  // namespace p2bw::comm
