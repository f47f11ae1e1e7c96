// Collectives of the pipeline executor, beside the point-to-point Transport: in-place sum
// all-reduces of device buffers over the groups of the process grid, non-blocking and waited for
// with the run's deadline, and a barrier. The executor never calls MPI for collectives itself, so
// another backend (NCCL) is one more implementation of this interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "comm/process_grid.hpp"
#include "comm/transport.hpp"
#include "core/device.hpp"

namespace p2bw::comm {

// The communicators of the process grid a collective runs over.
enum class Group {
  world,     // every rank
  replicas,  // the w data-parallel replicas of this rank's stage
  tied,      // the first and the last stage of this rank's pipeline (the tied embedding; d > 1)
};

// The MPI communicator of `group` on this rank (MPI_COMM_NULL for the tied group on a rank outside
// it), and the group's ranks in words for messages ("the replicas of stage 1 (ranks 2..3)").
MPI_Comm group_comm(const ProcessGrid& grid, Group group);
std::string describe(const ProcessGrid& grid, Group group);

// The one-line message of a reduction over `group` that made no progress within the deadline:
// "stage S: WHAT over GROUP: no progress for T s (pipeline.timeout_s)".
std::string stalled_reduction(const ProcessGrid& grid, Group group, const std::string& what,
                              double timeout_s);

class Collectives {
 public:
  virtual ~Collectives() = default;
  // Starts summing `data` in place over `group`; `what` names the reduction in a deadline error.
  // The reduction is ordered after the work queued on the compute stream until now (MPI: the copy
  // to host memory fences; NCCL: its stream waits for an event), so the caller never fences for
  // it. The buffer must not be touched until the reduction has completed. Every rank of the group
  // posts its reductions over that group in the same order.
  virtual int post_sum(FloatView data, Group group, const std::string& what) = 0;
  virtual int post_sum(DoubleView data, Group group, const std::string& what) = 0;
  // Advances a posted reduction without blocking; true when it has completed (its result is then
  // in the buffer and the handle is finished, as by wait).
  virtual bool test(int handle) = 0;
  // Waits for a posted reduction; throws RunError naming the stage, the reduction and the ranks
  // of the group when pipeline.timeout_s passes without progress.
  virtual void wait(int handle) = 0;
  // Waits until every rank of `group` has arrived, with the same deadline.
  virtual void barrier(Group group, const std::string& what) = 0;
  // Whether any reduction is posted and not yet finished.
  virtual bool pending() const = 0;
};

// Collectives over MPI, staged through host memory (buffers reused across steps) when MPI cannot
// read device memory; a buffer of more than max_elements (1 .. 2^31 - 1) is reduced in pieces.
std::unique_ptr<Collectives> make_mpi_collectives(const ProcessGrid& grid, double timeout_s,
                                                  std::int64_t max_elements = kMaxMpiCount);

}  // namespace p2bw::comm
