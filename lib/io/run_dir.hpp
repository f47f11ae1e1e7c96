// The run directory (output.dir of `p2bw train`) and its one owner.
//
// <output.dir>/run_id     text "p2bw-run 1 <32 hex digits>": the run's id, made when the folder
//                         first holds a run and kept across resumes; every checkpoint records it
// <output.dir>/train.lock flock(2)-locked by rank 0 of the live run for the whole run; the kernel
//                         releases it when the process dies, so a killed run never leaves it held
// A folder "holds a run" when it has any of run_id, deck.yaml, metrics.h5 or checkpoints/.
#pragma once

#include <string>
#include <vector>

namespace p2bw::io {

// What `p2bw train` was asked to do with output.dir.
enum class RunMode { fresh, resume, start_over };

// The files of a run that `--start-over` removes (relative to output.dir).
const std::vector<std::string>& run_files();

// The run id recorded in `dir` ("" when the folder holds none); a malformed file is a UserError.
std::string read_run_id(const std::string& dir);

// A new random run id (32 hex digits).
std::string new_run_id();

// Rank 0's claim on output.dir: makes the folder, takes the lock (refusing a second live run) and
// checks that `mode` fits what the folder holds. Writes nothing else: commit() does, once every
// other check has passed.
class RunDir {
 public:
  // `checkpoint_run_id`: the run id of the checkpoint a resume starts from.
  RunDir(const std::string& dir, RunMode mode, const std::string& checkpoint_run_id);
  ~RunDir();
  RunDir(const RunDir&) = delete;
  RunDir& operator=(const RunDir&) = delete;

  // The run id this run writes into its checkpoints.
  const std::string& run_id() const { return run_id_; }
  // --start-over: removes run_files(); then records the run id (a new run, or a resume into a
  // folder without one).
  void commit();

 private:
  std::string dir_;
  RunMode mode_;
  std::string run_id_;
  bool write_id_ = false;
  int lock_fd_ = -1;
};

}  // namespace p2bw::io
