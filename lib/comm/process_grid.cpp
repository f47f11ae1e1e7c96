// Process grid communicators; see process_grid.hpp.
#include "comm/process_grid.hpp"

#include "core/error.hpp"

namespace p2bw::comm {

ProcessGrid::ProcessGrid(MPI_Comm world, int depth, int width)
    : world_(world), depth_(depth), width_(width) {
  int size = 0;
  P2BW_MPI_CHECK(MPI_Comm_rank(world, &rank_));
  P2BW_MPI_CHECK(MPI_Comm_size(world, &size));
  P2BW_ASSERT(size == depth * width, "the world must have d·w ranks");
  stage_ = rank_ / width;
  replica_ = rank_ % width;
  P2BW_MPI_CHECK(MPI_Comm_split(world, replica_, stage_, &pipeline_));
  P2BW_MPI_CHECK(MPI_Comm_split(world, stage_, replica_, &replicas_));
  const bool end = depth > 1 && (first_stage() || last_stage());
  P2BW_MPI_CHECK(MPI_Comm_split(world, end ? replica_ : MPI_UNDEFINED, stage_, &tied_));
}

ProcessGrid::~ProcessGrid() {
  for (MPI_Comm* comm : {&pipeline_, &replicas_, &tied_})
    if (*comm != MPI_COMM_NULL) MPI_Comm_free(comm);
}

}  // namespace p2bw::comm
