// MPI collectives with host staging and deadlines; see collectives.hpp.
#include "comm/collectives.hpp"

#include <fmt/format.h>

#include <functional>
#include <limits>
#include <map>
#include <utility>

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

namespace {

class MpiCollectives : public Collectives {
 public:
  MpiCollectives(const ProcessGrid& grid, double timeout_s) : grid_(grid), timeout_s_(timeout_s) {}

  ~MpiCollectives() override {
    if (pending_.empty()) return;
    // Only on an error path: the reductions still in flight may write into their staging buffers
    // until MPI_Abort ends the process, so those are kept alive on purpose.
    auto* kept = new std::vector<Reduction>();
    for (auto& entry : pending_) kept->push_back(std::move(entry.second));
  }

  int post_sum(FloatView data, Group group, const std::string& what) override {
    return post(data, MPI_FLOAT, floats_, group, what);
  }
  int post_sum(DoubleView data, Group group, const std::string& what) override {
    return post(data, MPI_DOUBLE, doubles_, group, what);
  }

  bool test(int handle) override {
    auto it = find(handle);
    int done = 0;
    P2BW_MPI_CHECK(MPI_Test(&it->second.request, &done, MPI_STATUS_IGNORE));
    if (done) finish(it);
    return done != 0;
  }

  void wait(int handle) override {
    auto it = find(handle);
    Reduction& r = it->second;
    wait_with_deadline(r.request, timeout_s_, grid_.stage(),
                       fmt::format("{} over {}", r.what, describe(r.group)));
    finish(it);
  }

  void barrier(Group group, const std::string& what) override {
    MPI_Request request;
    P2BW_MPI_CHECK(MPI_Ibarrier(comm(group), &request));
    wait_with_deadline(request, timeout_s_, grid_.stage(),
                       fmt::format("{}: barrier over {}", what, describe(group)));
  }

  bool pending() const override { return !pending_.empty(); }

 private:
  struct Reduction {
    MPI_Request request = MPI_REQUEST_NULL;
    Group group = Group::world;
    std::string what;
    std::function<void()> copy_back;  // staging -> device buffer (nothing on host builds)
  };

  MPI_Comm comm(Group group) const {
    const MPI_Comm c = group_comm(grid_, group);
    P2BW_ASSERT(c != MPI_COMM_NULL, "a collective over a group this rank is not in");
    return c;
  }

  std::string describe(Group group) const { return comm::describe(grid_, group); }

  // Staging buffers (pinned on CUDA builds), reused across steps: the executor reduces the same
  // few buffers every step.
  template <class T>
  int post(Kokkos::View<T*, Memory> data, MPI_Datatype type, StagingPool<T>& staging, Group group,
           const std::string& what) {
    // MPI counts elements in an int; a larger buffer would need a chunked reduction.
    P2BW_ASSERT(data.extent(0) <= static_cast<size_t>(std::numeric_limits<int>::max()),
                "an all-reduce of more than 2^31 - 1 elements");
    const typename StagingPool<T>::Buffer host = staging.take(data);
    Kokkos::deep_copy(host, data);  // also orders the reduction after the kernels that wrote it
    Reduction r;
    r.group = group;
    r.what = what;
    if (StagingPool<T>::copies)
      r.copy_back = [data, host, &staging] {
        Kokkos::deep_copy(data, host);
        staging.give_back(host);
      };
    P2BW_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, host.data(), static_cast<int>(host.extent(0)), type,
                                  MPI_SUM, comm(group), &r.request));
    pending_.emplace(next_, std::move(r));
    return next_++;
  }

  std::map<int, Reduction>::iterator find(int handle) {
    auto it = pending_.find(handle);
    P2BW_ASSERT(it != pending_.end(), "an unknown reduction");
    return it;
  }
  void finish(std::map<int, Reduction>::iterator it) {
    if (it->second.copy_back) it->second.copy_back();
    pending_.erase(it);
  }

  const ProcessGrid& grid_;
  double timeout_s_;
  std::map<int, Reduction> pending_;
  StagingPool<float> floats_;
  StagingPool<double> doubles_;
  int next_ = 0;
};

}  // namespace

std::unique_ptr<Collectives> make_mpi_collectives(const ProcessGrid& grid, double timeout_s) {
  return std::make_unique<MpiCollectives>(grid, timeout_s);
}

}  // namespace p2bw::comm
