// MPI collectives with host staging and deadlines; see collectives.hpp.
#include "comm/collectives.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "comm/pending.hpp"
#include "comm/staging.hpp"
#include "comm/transport.hpp"
#include "core/error.hpp"

namespace p2bw::comm {

MPI_Comm group_comm(const ProcessGrid& grid, Group group) {
  return group == Group::world      ? grid.world()
         : group == Group::replicas ? grid.replicas()
                                    : grid.tied();
}

std::string describe(const ProcessGrid& grid, Group group) {
  const int d = grid.depth(), w = grid.width();
  switch (group) {
    case Group::world:
      return fmt::format("all {} ranks", d * w);
    case Group::replicas:
      return fmt::format("the replicas of stage {} (ranks {}..{})", grid.stage(), grid.stage() * w,
                         grid.stage() * w + w - 1);
    case Group::tied:
      return fmt::format("the tied embedding (ranks {} and {})", grid.rank_of_stage(0),
                         grid.rank_of_stage(d - 1));
  }
  return "?";
}

std::string stalled_reduction(const ProcessGrid& grid, Group group, const std::string& what,
                              double timeout_s) {
  return stalled(grid.stage(), fmt::format("{} over {}", what, describe(grid, group)), timeout_s);
}

namespace {

class MpiCollectives : public Collectives {
 public:
  MpiCollectives(const ProcessGrid& grid, double timeout_s, std::int64_t max_elements)
      : grid_(grid), timeout_s_(timeout_s), max_elements_(max_elements) {
    P2BW_ASSERT(max_elements_ > 0 && max_elements_ <= std::numeric_limits<int>::max(),
                "an MPI reduction limit outside 1 .. 2^31 - 1 elements");
  }

  ~MpiCollectives() override {
    if (pending_.empty()) return;
    // Only on an error path: the reductions still in flight may write into their staging buffers
    // until MPI_Abort ends the process, so those are kept alive on purpose.
    new PendingOps<Reduction>(std::move(pending_));
  }

  int post_sum(FloatView data, Group group, const std::string& what) override {
    return post(data, MPI_FLOAT, group, what);
  }
  int post_sum(DoubleView data, Group group, const std::string& what) override {
    return post(data, MPI_DOUBLE, group, what);
  }

  bool test(int handle) override {
    if (!test_all(pending_.at(handle).requests)) return false;
    finish(handle);
    return true;
  }

  void wait(int handle) override {
    Reduction& r = pending_.at(handle);
    if (!wait_for(r.requests.data(), static_cast<int>(r.requests.size()), timeout_s_))
      throw RunError(stalled_reduction(grid_, r.group, r.what, timeout_s_));
    finish(handle);
  }

  void barrier(Group group, const std::string& what) override {
    MPI_Request request;
    P2BW_MPI_CHECK(MPI_Ibarrier(comm(group), &request));
    wait_with_deadline(request, timeout_s_, grid_.stage(),
                       fmt::format("{}: barrier over {}", what, describe(group)));
  }

  bool pending() const override { return !pending_.empty(); }

 private:
  using Byte = unsigned char;
  using Bytes = Kokkos::View<Byte*, Memory, Kokkos::MemoryUnmanaged>;  // a buffer's bytes

  struct Reduction {
    std::vector<MPI_Request> requests;  // one per piece of at most max_elements_
    Group group = Group::world;
    std::string what;
    Bytes data;                         // the device buffer
    StagingPool<Byte>::Buffer staging;  // its host copy (the buffer itself on host builds)
  };

  MPI_Comm comm(Group group) const {
    const MPI_Comm c = group_comm(grid_, group);
    P2BW_ASSERT(c != MPI_COMM_NULL, "a collective over a group this rank is not in");
    return c;
  }

  std::string describe(Group group) const { return comm::describe(grid_, group); }

  // Staging buffers (pinned on CUDA builds), reused across steps: the executor reduces the same
  // few buffers every step. A buffer of more than max_elements_ is reduced as consecutive pieces
  // of at most that many elements (MPI counts in an int), posted in the same order on every rank.
  template <class T>
  int post(Kokkos::View<T*, Memory> data, MPI_Datatype type, Group group, const std::string& what) {
    return pending_.add([&](Reduction& r) {
      r.group = group;
      r.what = what;
      r.data = Bytes(reinterpret_cast<Byte*>(data.data()), data.extent(0) * sizeof(T));
      r.staging = staging_.take(r.data);
      // Also orders the reduction after the kernels that wrote the buffer.
      if (StagingPool<Byte>::copies) Kokkos::deep_copy(r.staging, r.data);
      T* host = reinterpret_cast<T*>(r.staging.data());
      const std::int64_t total = static_cast<std::int64_t>(data.extent(0));
      const std::int64_t pieces =
          std::max<std::int64_t>(1, (total + max_elements_ - 1) / max_elements_);
      r.requests.assign(static_cast<size_t>(pieces), MPI_REQUEST_NULL);
      for (std::int64_t k = 0; k < pieces; ++k) {
        const std::int64_t begin = k * max_elements_;
        P2BW_MPI_CHECK(MPI_Iallreduce(
            MPI_IN_PLACE, host + begin, static_cast<int>(std::min(max_elements_, total - begin)),
            type, MPI_SUM, comm(group), &r.requests[static_cast<size_t>(k)]));
      }
    });
  }

  // A completed reduction: its result to the device buffer, the staging back to the pool.
  void finish(int handle) {
    Reduction& r = pending_.at(handle);
    if (StagingPool<Byte>::copies) Kokkos::deep_copy(r.data, r.staging);
    staging_.give_back(r.staging);
    r.staging = {};
    pending_.remove(handle);
  }

  const ProcessGrid& grid_;
  double timeout_s_;
  std::int64_t max_elements_;
  PendingOps<Reduction> pending_;
  StagingPool<Byte> staging_;
};

}  // namespace

std::unique_ptr<Collectives> make_mpi_collectives(const ProcessGrid& grid, double timeout_s,
                                                  std::int64_t max_elements) {
  return std::make_unique<MpiCollectives>(grid, timeout_s, max_elements);
}

}  // namespace p2bw::comm
