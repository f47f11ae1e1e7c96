// Point-to-point transport of activations and gradients between neighbouring stages. Messages
// are identified by (microbatch, direction) in the MPI tag, never by arrival order alone; sends
// and receives are non-blocking and waited for with a deadline, so a run that cannot progress
// fails with a message naming the stage, the action and the peer instead of hanging. Buffers in
// device memory are staged through host memory (the MPI need not be CUDA-aware). An NCCL
// transport (grouped send/recv on the compute stream) implements the same interface.
#pragma once

#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <memory>
#include <string>
#include <vector>

namespace p2bw::comm {

using DeviceBuffer = Kokkos::View<float*, Kokkos::DefaultExecutionSpace::memory_space>;

enum class Direction { activation = 0, gradient = 1 };

class Transport {
 public:
  virtual ~Transport() = default;
  // Starts sending `buffer` (its contents as of now) to world rank `peer`.
  virtual int post_send(DeviceBuffer buffer, int peer, int microbatch, Direction direction) = 0;
  // Starts receiving into `buffer` from world rank `peer`.
  virtual int post_receive(DeviceBuffer buffer, int peer, int microbatch, Direction direction) = 0;
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

std::unique_ptr<Transport> make_mpi_transport(MPI_Comm world, double timeout_s, int stage);

// Waits for a non-blocking MPI operation (e.g. a collective) with a deadline: tests it in a loop
// that yields the core between tests, throws RunError("stage S: WHAT: no progress ...") when late.
void wait_with_deadline(MPI_Request& request, double timeout_s, int stage, const std::string& what);

}  // namespace p2bw::comm
