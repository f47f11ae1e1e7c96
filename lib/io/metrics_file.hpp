// The training metrics file <output.dir>/metrics.h5 (format "p2bw-metrics", version 1): one row
// per optimizer step (loss, learning rate, gradient norm, throughput), one row per step and stage
// (compute, wait and idle seconds, peak memory, beside the predicted memory) and, optionally, the
// per-rank trace of executed actions. Rank 0 writes it alone and flushes every row, so a killed
// run keeps every row written (a step's row follows once every stage's timing of it is known); a
// resumed run truncates the rows it will recompute. The reader validates a file and `p2bw inspect`
// prints its summary (and that of the simulator's timeline).
//
// Layout (names are fixed; analysis scripts rely on them):
//   /                 attributes format = "p2bw-metrics", format_version = 1, p2bw_version, deck,
//                     depth, width, stage_map, kokkos, start_time, transport (the run's choice
//                     and why, e.g. "mpi (no rank has a GPU)"); after a resume also
//                     resumed_at_steps (int64 list) and resume_log (one line per resume, with
//                     its layout and transport)
//   /steps/           extendible 1-D: step (int64, 1-based), loss, lr, grad_norm, tokens_per_s,
//                     time_s (float64), skipped (uint8, 1 for a non-finite step)
//   /stages/<s>/      extendible 1-D: step (int64), compute_s, wait_s, idle_s (float64),
//                     peak_memory_bytes (int64); attributes predicted_memory_bytes (the total) and
//                     predicted_{weights,gradients,optimizer,activations,buffers,workspace}_bytes
//   /eval/            optional (a run with a validation split), extendible 1-D: step (int64,
//                     the steps done when evaluated), loss (float64, mean per target position)
//   /trace/rank_<r>/  optional, extendible 1-D: kind, microbatch, version (int32), start, end
//                     (float64 s); attribute action_names on /trace (comma-separated, by code)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/memory_bytes.hpp"
#include "io/hdf5_file.hpp"

namespace p2bw::io {

inline constexpr const char* kMetricsFormat = "p2bw-metrics";
inline constexpr std::int64_t kMetricsFormatVersion = 1;

// Predicted bytes per rank of one stage, by category (pipeline::StageMemory's byte counts).
using PredictedMemory = MemoryBytes;

// What a run writes once, at the start (root attributes, stage attributes, trace names).
struct MetricsHeader {
  std::string deck_yaml;     // the resolved deck (config::to_yaml)
  std::string p2bw_version;  // p2bw_version()
  std::string kokkos;        // kokkos_description()
  std::string start_time;    // ISO 8601 UTC, e.g. utc_timestamp()
  std::string stage_map;     // one line per stage
  std::string transport;     // comm::TransportChoice::text()
  int depth = 1, width = 1;
  std::vector<PredictedMemory> predicted;  // one per stage: depth entries
  std::string action_names;  // for traces: comma-separated names indexed by TraceEvent::kind
};

struct StepRow {
  std::int64_t step = 0;  // 1-based optimizer step
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0;
  double time_s = 0;     // wall clock of the run: since its start, continued across resumes
  bool skipped = false;  // a non-finite step whose update was skipped
};

// One step on one stage (replica 0 of the stage).
struct StageRow {
  std::int64_t step = 0;
  double compute_s = 0, wait_s = 0, idle_s = 0;
  std::int64_t peak_memory_bytes = 0;
};

struct TraceEvent {
  std::int32_t kind = 0;  // code into MetricsHeader::action_names
  std::int32_t microbatch = 0, version = 0;
  double start = 0, end = 0;  // seconds
};

class MetricsWriter {
 public:
  // resume = false, or no file at `path`: creates the file (replacing any old one) with the
  // header. resume = true and the file exists: opens it, checks that it is a p2bw metrics file of
  // this version (UserError otherwise), keeps its root attributes (a resumed run may change the
  // layout: stage groups it lacks are added with the header's predictions), appends first_step to
  // resumed_at_steps and a line to resume_log, cuts every /steps and /stages series to the rows
  // with step < first_step, so that recomputed steps replace their old rows, and drops /trace
  // (its times belong to the interrupted run).
  MetricsWriter(const std::string& path, const MetricsHeader& header, std::int64_t first_step,
                bool resume);

  // One call per step, with steps increasing and one row per stage (stages[s] for stage s, all
  // `depth` of them); flushed to disk before it returns.
  void append(const StepRow& row, const std::vector<StageRow>& stages);

  // Appends the validation loss of the weights after `step` to /eval (created on first use);
  // flushed.
  void append_eval(std::int64_t step, double loss);

  // Appends events to /trace/rank_<rank> (created on first use, with /trace's action_names);
  // flushed.
  void append_trace(int rank, const std::vector<TraceEvent>& events);

  const std::string& path() const { return file_.path(); }
  // time_s of the last row kept on resume (0 for a new file): a resumed run adds its own
  // elapsed time to it, so /steps/time_s keeps growing across resumes.
  double elapsed_before() const { return elapsed_before_; }

 private:
  void add_stage(int stage, const PredictedMemory& predicted);
  void truncate_group(const std::string& group, const std::vector<std::string>& series,
                      std::int64_t first_step);

  bool reopened_;  // resuming into an existing file (declared before file_, which needs it)
  H5File file_;
  int depth_;
  std::string action_names_;
  std::int64_t last_step_ = 0;
  double elapsed_before_ = 0;
};

// Everything in a metrics file, validated (read_metrics throws UserError "FILE: what is wrong
// (allowed: ...)" for a missing or foreign file, a wrong format or version, a missing dataset or
// attribute, or series of different lengths within a group).
struct MetricsContents {
  std::string path;
  std::int64_t format_version = 0;
  std::string p2bw_version, deck_yaml, stage_map, kokkos, start_time, resume_log;
  std::string transport;  // "" in files written before the attribute existed
  std::int64_t depth = 0, width = 0;
  std::vector<std::int64_t> resumed_at_steps;
  struct Steps {
    std::vector<std::int64_t> step;
    std::vector<double> loss, lr, grad_norm, tokens_per_s, time_s;
    std::vector<std::uint8_t> skipped;
  } steps;
  struct Stage {
    int index = 0;
    std::vector<std::int64_t> step, peak_memory_bytes;
    std::vector<double> compute_s, wait_s, idle_s;
    PredictedMemory predicted;
    std::int64_t predicted_total = 0;  // the predicted_memory_bytes attribute
  };
  std::vector<Stage> stages;  // every /stages/<s> in the file (at least 0 .. depth-1), by s
  struct Eval {
    std::vector<std::int64_t> step;
    std::vector<double> loss;
  } eval;  // empty without /eval
  struct TraceRank {
    int rank = 0;
    std::vector<std::int32_t> kind, microbatch, version;
    std::vector<double> start, end;
  };
  bool has_trace = false;
  std::string action_names;
  std::vector<TraceRank> trace;  // by rank
};
MetricsContents read_metrics(const std::string& path);

// Measured bubble of one traced rank: 1 - busy / span, busy = total duration of its compute
// events (action names F, B, Bi, Bw, or forward*/backward*), span = last end - first start; 0
// without events.
double trace_bubble(const MetricsContents::TraceRank& rank, const std::string& action_names);

// The text `p2bw inspect` prints for a metrics file: format, model, layout, steps recorded,
// first/last/min loss, mean tokens/s, skipped steps, per-stage mean compute/wait/idle seconds per
// step and bubble = (wait + idle) / (compute + wait + idle), peak versus predicted memory, and the
// measured bubble per traced rank. Validates like read_metrics.
std::string summarize_metrics(const std::string& path);

// Any HDF5 file p2bw inspect knows (metrics.h5, simulation_file.hpp's timeline), by its format
// attribute; UserError naming the known formats
// for any other file.
std::string summarize_hdf5(const std::string& path);

// Now as ISO 8601 UTC, e.g. "2025-01-31T12:00:00Z" (for MetricsHeader::start_time).
std::string utc_timestamp();

}  // namespace p2bw::io
