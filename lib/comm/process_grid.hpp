// The process grid: world = d·w ranks; stage s runs on ranks [s·w, (s+1)·w) (the paper's layout:
// the replicas of a stage are neighbours, so they share a node when a node holds w ranks), and
// pipeline j is {j, j+w, j+2w, ...}. Communicators for the pipeline, for the data-parallel
// replicas of a stage, and for the tied embedding (first and last stage of a pipeline).
#pragma once

#include <mpi.h>

namespace p2bw::comm {

class ProcessGrid {
 public:
  ProcessGrid(MPI_Comm world, int depth, int width);
  ~ProcessGrid();
  ProcessGrid(const ProcessGrid&) = delete;
  ProcessGrid& operator=(const ProcessGrid&) = delete;

  int depth() const { return depth_; }
  int width() const { return width_; }
  int rank() const { return rank_; }
  int stage() const { return stage_; }
  int replica() const { return replica_; }
  bool first_stage() const { return stage_ == 0; }
  bool last_stage() const { return stage_ == depth_ - 1; }
  // World rank of stage s in this rank's pipeline.
  int rank_of_stage(int s) const { return s * width_ + replica_; }

  MPI_Comm world() const { return world_; }
  MPI_Comm pipeline() const { return pipeline_; }  // my pipeline, ordered by stage
  MPI_Comm replicas() const { return replicas_; }  // the w ranks of my stage
  // First and last stage of my pipeline (MPI_COMM_NULL elsewhere and when d = 1).
  MPI_Comm tied() const { return tied_; }

 private:
  MPI_Comm world_;
  int depth_, width_, rank_, stage_, replica_;
  MPI_Comm pipeline_ = MPI_COMM_NULL, replicas_ = MPI_COMM_NULL, tied_ = MPI_COMM_NULL;
};

}  // namespace p2bw::comm
