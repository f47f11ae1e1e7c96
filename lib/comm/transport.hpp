// Point-to-point transport of activations and gradients between neighbouring stages. Messages
// are identified by (microbatch, direction) in the MPI tag, never by arrival order alone; sends
// and receives are non-blocking and waited for with a deadline, so a run that cannot progress
// fails with a message naming the stage, the action and the peer instead of hanging. Buffers in
// device memory are staged through host memory (the MPI need not be CUDA-aware). NCCL's
// implementation (nccl.hpp, CUDA builds with P2BW_NCCL) has no tags: it relies on the checker's
// proof that both sides of every pair of ranks issue their messages in the same order.
// A message is its buffer's bytes: a bf16 run's buffers are bf16 (StoreView), so it sends 2 bytes
// per value with no packing. Collectives live beside it in collectives.hpp.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/deck.hpp"
#include "core/device.hpp"
#include "core/store_view.hpp"

namespace p2bw::comm {

// evaluation: the activations of a forward-only pass, numbered apart from training's microbatches.
enum class Direction { activation = 0, gradient = 1, evaluation = 2 };

// "activation", "gradient" or "evaluation activation", for messages.
const char* to_string(Direction direction);

// One half of a transfer: a buffer, the world rank of the peer, and the message's identity.
struct Message {
  StoreView buffer;
  int peer = 0;
  int microbatch = 0;
  Direction direction = Direction::activation;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Starts sending the message's buffer (its contents as of now) to its peer.
  virtual int post_send(const Message& message) = 0;
  // Starts receiving into the message's buffer from its peer.
  virtual int post_receive(const Message& message) = 0;
  // The schedule's combined actions (send to a neighbour and receive from the same neighbour) as
  // one grouped call; returns the handles of the send and of the receive.
  virtual std::pair<int, int> post_exchange(const Message& send, const Message& receive) = 0;
  // Waits for a posted operation; throws a RunError naming `what` after the deadline.
  virtual void wait(int handle, const std::string& what) = 0;
  // Waits for every posted operation.
  virtual void wait_all(const std::string& what) = 0;
  // Whether a posted operation has completed (then it is finished as by wait), without blocking.
  virtual bool test(int handle) = 0;
};

// Thrown when a run cannot go on (a peer is stalled or gone): not the user's mistake, and every
// rank must stop. The message names the stage, the action and the peer.
class RunError : public std::runtime_error {
 public:
  explicit RunError(const std::string& message) : std::runtime_error(message) {}
};

// The one-line message of a transfer that made no progress within the deadline: "stage S: WHAT: no
// progress for T s waiting to send the activation of microbatch M to rank R (pipeline.timeout_s)".
std::string stalled_transfer(int stage, const std::string& what, double timeout_s,
                             const Message& message, bool send);

// The most bytes (or elements) one MPI call carries here: MPI counts in an int, so larger buffers
// go as several consecutive MPI messages (or reductions). Tests pass smaller limits.
constexpr std::int64_t kMaxMpiCount = std::int64_t{1} << 30;

// MPI point-to-point over `world` (peers are its ranks), each message as MPI_BYTE, in pieces of
// at most max_message_bytes (1 .. 2^31 - 1).
std::unique_ptr<Transport> make_mpi_transport(MPI_Comm world, double timeout_s, int stage,
                                              std::int64_t max_message_bytes = kMaxMpiCount);

// Tests non-blocking MPI operations (e.g. a collective) until all have completed; false when
// timeout_s passes first. It spins as MPI_Wait does (MPI advances large messages and non-blocking
// collectives only inside MPI calls), yielding the core between tests so that ranks sharing
// cores still get to compute.
bool wait_for(MPI_Request* requests, int count, double timeout_s);

// One MPI_Testall over the requests: whether all have completed.
bool test_all(std::vector<MPI_Request>& requests);

// The one-line message of anything else that made no progress within the deadline: "stage S:
// WHAT: no progress for T s (pipeline.timeout_s)".
std::string stalled(int stage, const std::string& what, double timeout_s);

// wait_for one request, throwing RunError(stalled(...)) when late.
void wait_with_deadline(MPI_Request& request, double timeout_s, int stage, const std::string& what);

}  // namespace p2bw::comm
