// MPI transport with host staging and deadlines; see transport.hpp.
#include "comm/transport.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#include "comm/pending.hpp"
#include "comm/staging.hpp"
#include "core/error.hpp"

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

std::string stalled_transfer(int stage, const std::string& what, double timeout_s,
                             const Message& message, bool send) {
  return fmt::format(
      "stage {}: {}: no progress for {} s waiting to {} the {} of microbatch {} {} rank {} "
      "(pipeline.timeout_s)",
      stage, what, timeout_s, send ? "send" : "receive", to_string(message.direction),
      message.microbatch, send ? "to" : "from", message.peer);
}

namespace {

// Tags repeat after this many microbatches (far beyond d in flight); the largest tag stays below
// 32767, the least MPI_TAG_UB the standard allows.
constexpr int kTagMicrobatches = 1 << 13;
constexpr int kDirections = 3;

int tag_of(int microbatch, Direction direction) {
  return (microbatch % kTagMicrobatches) * kDirections + static_cast<int>(direction);
}

}  // namespace

bool test_all(std::vector<MPI_Request>& requests) {
  int done = 0;
  P2BW_MPI_CHECK(
      MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE));
  return done != 0;
}

// MPI advances large messages and non-blocking collectives chunk by chunk inside MPI calls only,
// so any pause between tests slows every transfer down (with a pause of up to 200 us, the demo's
// 3.5 MB data-parallel all-reduce step took 12 ms instead of 3.5 ms on two ranks of one VM).
bool wait_for(MPI_Request* requests, int count, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  int done = 0;
  for (std::uint64_t tests = 0;; ++tests) {
    P2BW_MPI_CHECK(MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE));
    if (done) return true;
    if (tests % 64 == 0 && std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
}

std::string stalled(int stage, const std::string& what, double timeout_s) {
  return fmt::format("stage {}: {}: no progress for {} s (pipeline.timeout_s)", stage, what,
                     timeout_s);
}

namespace {

// A message goes from its buffer's bytes: staged through pooled (pinned) host buffers on CUDA
// builds, the buffer itself on host builds. No staging buffer is allocated once each message
// size has been in flight as often at once. A message of more than max_message_bytes goes as
// consecutive MPI messages of at most that many bytes with the same tag, which MPI delivers in
// the order they were posted (MPI counts in an int: one MPI message carries less than 2 GiB).
class MpiTransport : public Transport {
 public:
  MpiTransport(MPI_Comm world, double timeout_s, int stage, std::int64_t max_message_bytes)
      : world_(world), timeout_s_(timeout_s), stage_(stage), max_bytes_(max_message_bytes) {
    P2BW_ASSERT(max_bytes_ > 0 && max_bytes_ <= std::numeric_limits<int>::max(),
                "an MPI message limit outside 1 .. 2^31 - 1 bytes");
  }

  ~MpiTransport() override {
    if (pending_.empty()) return;
    // Only on an error path (a run ends with wait_all): cancel what is in flight and keep its
    // staging buffers alive on purpose, since a transfer already matched may still write into
    // them until MPI_Abort ends the process.
    pending_.for_each([](Operation& op) {
      for (MPI_Request& request : op.requests)
        if (request != MPI_REQUEST_NULL) MPI_Cancel(&request);
    });
    new PendingOps<Operation>(std::move(pending_));
  }

  int post_send(const Message& message) override {
    return pending_.add([&](Operation& op) {
      start(op, message, true);
      // Also orders the send after the kernels that wrote the buffer.
      if (StagingPool<Byte>::copies) Kokkos::deep_copy(op.staging, bytes_of(message));
      for_each_piece(op, [&](Byte* piece, int bytes, MPI_Request* request) {
        P2BW_MPI_CHECK(
            MPI_Isend(piece, bytes, MPI_BYTE, message.peer, tag(message), world_, request));
      });
    });
  }

  int post_receive(const Message& message) override {
    return pending_.add([&](Operation& op) {
      start(op, message, false);
      for_each_piece(op, [&](Byte* piece, int bytes, MPI_Request* request) {
        P2BW_MPI_CHECK(
            MPI_Irecv(piece, bytes, MPI_BYTE, message.peer, tag(message), world_, request));
      });
    });
  }

  // MPI needs no grouping: both halves are non-blocking and matched by tag.
  std::pair<int, int> post_exchange(const Message& send, const Message& receive) override {
    const int sent = post_send(send);
    return {sent, post_receive(receive)};
  }

  void wait(int handle, const std::string& what) override {
    Operation& op = pending_.at(handle);
    if (!wait_for(op.requests.data(), static_cast<int>(op.requests.size()), timeout_s_))
      throw RunError(stalled_transfer(stage_, what, timeout_s_, op.message, op.send));
    finish(handle);
  }

  bool test(int handle) override {
    if (!test_all(pending_.at(handle).requests)) return false;
    finish(handle);
    return true;
  }

  void wait_all(const std::string& what) override {
    while (!pending_.empty()) wait(pending_.oldest(), what);
  }

 private:
  using Byte = unsigned char;
  using Bytes = Kokkos::View<Byte*, Memory, Kokkos::MemoryUnmanaged>;  // a buffer's bytes

  struct Operation {
    Message message;
    StagingPool<Byte>::Buffer staging;  // the buffer's own bytes on host builds
    bool send = false;
    std::vector<MPI_Request> requests;  // one per piece of at most max_bytes_
  };
  void start(Operation& op, const Message& message, bool send) {
    op.message = message;
    op.staging = staging_.take(bytes_of(message));
    op.send = send;
  }
  static Bytes bytes_of(const Message& message) {
    return Bytes(static_cast<Byte*>(message.buffer.data()),
                 static_cast<size_t>(message.buffer.bytes()));
  }
  // Calls post(piece, bytes, request) for each consecutive piece of op's staging, in order, with
  // a request of op's for each (one piece when the message is small, none when it is empty).
  template <class Post>
  void for_each_piece(Operation& op, Post post) {
    const std::int64_t total = static_cast<std::int64_t>(op.staging.extent(0));
    const std::int64_t pieces = std::max<std::int64_t>(1, (total + max_bytes_ - 1) / max_bytes_);
    op.requests.assign(static_cast<size_t>(pieces), MPI_REQUEST_NULL);
    for (std::int64_t k = 0; k < pieces; ++k) {
      const std::int64_t begin = k * max_bytes_;
      post(op.staging.data() + begin, static_cast<int>(std::min(max_bytes_, total - begin)),
           &op.requests[static_cast<size_t>(k)]);
    }
  }
  static int tag(const Message& message) { return tag_of(message.microbatch, message.direction); }

  // A completed operation: a receive's data to its device buffer, the staging back to the pool.
  void finish(int handle) {
    Operation& op = pending_.at(handle);
    if (StagingPool<Byte>::copies && !op.send) Kokkos::deep_copy(bytes_of(op.message), op.staging);
    staging_.give_back(op.staging);
    op.staging = {};
    op.message.buffer = StoreView();
    pending_.remove(handle);
  }

  MPI_Comm world_;
  double timeout_s_;
  int stage_;
  std::int64_t max_bytes_;
  PendingOps<Operation> pending_;
  StagingPool<Byte> staging_;
};

}  // namespace

void wait_with_deadline(MPI_Request& request, double timeout_s, int stage,
                        const std::string& what) {
  if (!wait_for(&request, 1, timeout_s)) throw RunError(stalled(stage, what, timeout_s));
}

std::unique_ptr<Transport> make_mpi_transport(MPI_Comm world, double timeout_s, int stage,
                                              std::int64_t max_message_bytes) {
  return std::make_unique<MpiTransport>(world, timeout_s, stage, max_message_bytes);
}

}  // namespace p2bw::comm
