// Pipeline schedules as data: for every stage an ordered list of actions (compute, messages,
// all-reduce, optimizer step) for GPipe, PipeDream-Flush and PipeDream-2BW; the generators, the
// 2BW weight-version rule and small queries an executor needs.
//
// Conventions
// - Stages are 0-based (s = 0 .. d-1). Batches are 0-based (t = 0 .. batches-1).
// - Microbatches are numbered 1-based over the whole run, like the paper's k:
//   batch t holds microbatches t*m+1 .. (t+1)*m.
// - Weight versions are logical: W(0) is the initial weights, the step after batch t writes
//   W(t+1). Flush and GPipe use W(t) for every microbatch of batch t. 2BW uses
//   v(k) = max(floor((k-1)/m) - 1, 0). With a synchronous warm-up of K flush batches,
//   batch t < K uses W(t), and microbatch j = k - K*m of the 2BW phase uses
//   K + max(floor((j-1)/m) - 1, 0).
// - Physical buffers: flush and GPipe update buffer 0 in place. 2BW keeps W(v) in buffer
//   (v - K) mod 2 for v >= K (buffer 0 for v <= K), so a step writes the buffer of the version it
//   retires and never copies weights. This two-buffer layout is what the checker and the
//   simulator reason about; the executor keeps its buffers by version instead
//   (pipeline/weight_versions.hpp: W(t+1) over batch t's gradients) and may apply a 2bw step
//   later than the step action, before W(t+1) is first used.
// - Resuming (first_batch = r > 0): a run checkpointed after the step of batch r-1 restarts with
//   a schedule of batches r .. batches-1 (microbatches r*m+1 .. batches*m). No activation survives
//   the restart, so the pipeline refills at batch r, but numbering, versions and buffers are the
//   uninterrupted run's: every microbatch keeps its global v(k), and the buffers start as
//   initial_buffers() gives (2bw past its warm-up: W(r) and W(r-1), which batch r uses).
#pragma once

#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "schedule/kind.hpp"

namespace p2bw::schedule {

// A schedule the user supplied (text, generator arguments, costs) is unusable.
class ScheduleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Sends and receives name the neighbour implicitly: activations flow s -> s+1, gradients
// s+1 -> s. The two exchange kinds post a send and a receive with the SAME neighbour as one
// grouped non-blocking call (Megatron's send_forward_recv_backward / send_backward_recv_forward);
// check.hpp states their completion rule.
enum class ActionKind {
  forward,             // F mb v: forward of mb on weights W(v)
  backward,            // B mb v: full backward (input and weight gradients) on W(v)
  backward_input,      // Bi mb v: reserved split backward, input-gradient half
  backward_weight,     // Bw mb v: reserved split backward, weight-gradient half
  send_act,            // send mb's output activation to s+1
  recv_act,            // receive mb's input activation from s-1
  send_grad,           // send mb's input gradient to s-1
  recv_grad,           // receive mb's output gradient from s+1
  send_act_recv_grad,  // exchange with s+1: send activation of mb, receive gradient of recv_mb
  send_grad_recv_act,  // exchange with s-1: send gradient of mb, receive activation of recv_mb
  allreduce,           // data-parallel gradient all-reduce of the stage for `batch`
  step,                // optimizer step after `batch`: writes W(version) into `buffer`
  batch_begin,         // marker: batch starts (the schedule's first batch includes the warm-up)
  batch_end,           // marker: batch ends (after its step)
};

struct Action {
  ActionKind kind = ActionKind::forward;
  int mb = 0;        // microbatch (1-based) of compute and messages; the send half of an exchange
  int recv_mb = 0;   // exchanges only: microbatch of the receive half
  int version = -1;  // compute: weight version used; step: version written
  int batch = -1;    // allreduce, step and markers
  int buffer = -1;   // step: physical weight buffer written (0 or 1)
  int retired = -1;  // step: version the write overwrites, -1 when the buffer held nothing

  static Action forward(int mb, int version) { return compute(ActionKind::forward, mb, version); }
  static Action backward(int mb, int version) { return compute(ActionKind::backward, mb, version); }
  static Action compute(ActionKind kind, int mb, int version);
  static Action message(ActionKind kind, int mb);
  static Action exchange(ActionKind kind, int send_mb, int recv_mb);
  static Action marker(ActionKind kind, int batch);  // allreduce, batch_begin, batch_end
  static Action step(int batch, int version, int buffer, int retired);
};

bool operator==(const Action& a, const Action& b);
inline bool operator!=(const Action& a, const Action& b) {
  return !(a == b);
}

struct Schedule {
  ScheduleKind kind = ScheduleKind::flush;
  int stages = 1;        // d
  int microbatches = 1;  // m, per batch and pipeline
  int batches = 1;       // of the whole run, including those before first_batch
  int sync_warmup = 0;   // K (2bw only): the first K batches run as flush batches
  int first_batch = 0;   // run batch the schedule starts at (> 0: resumed after a checkpoint)
  std::vector<std::vector<Action>> actions;  // actions[stage], in execution order

  int total_microbatches() const { return microbatches * batches; }  // last microbatch
  int first_microbatch() const { return first_batch * microbatches + 1; }
};

bool operator==(const Schedule& a, const Schedule& b);
inline bool operator!=(const Schedule& a, const Schedule& b) {
  return !(a == b);
}

// Builds the schedule of batches first_batch .. batches-1; throws ScheduleError for d < 1, m < 1,
// batches < 1, K outside [0, batches], K > 0 for a kind other than 2bw, m < d for 2bw, or
// first_batch outside [0, batches).
// - GPipe, per batch: `recv_act; F; send_act` for every microbatch, then `recv_grad; B;
//   send_grad` in microbatch order (GPipe used reverse order; ours accumulates gradients in the
//   same order as flush, so the two give bitwise-identical weights), allreduce, step.
// - Flush and 2BW use Megatron's non-interleaved 1F1B order with warm = min(d-s-1, count):
//   warm-up `recv_act; F; send_act`, then `recv_act` once, steady `F; send_act_recv_grad; B;
//   send_grad_recv_act` (the last steady backward sends its gradient alone), cool-down
//   `recv_grad; B; send_grad`. Flush runs this per batch (count = m); 2BW once over the whole run
//   (count = m * batches; after a sync warm-up, over the remaining batches), so only the first
//   2BW batch warms up and only the last drains.
// - Messages to a missing neighbour are left out (none at all for d = 1). A batch's allreduce,
//   step and batch_end follow its m-th backward and that backward's gradient send; batch_begin
//   of the next batch follows at once.
// - Resuming at first_batch = r: flush and GPipe batches (and 2bw warm-up batches) look exactly as
//   in the whole run. The 2bw phase runs its 1F1B loop from batch max(K, r), warm-up included, so
//   for r <= K the schedule is the tail of the whole run's, and for r > K batch r refills the
//   pipeline on W(r-1) (the whole run's version for it). Steps record buffers and retired
//   versions from initial_buffers(kind, K, r).
Schedule generate(ScheduleKind kind, int stages, int microbatches, int batches, int sync_warmup = 0,
                  int first_batch = 0);

// The forward-only schedule of an evaluation: one batch of `microbatches` microbatches, each
// stage doing `recv_act; F mb v0; send_act` per microbatch (messages to a missing neighbour left
// out). No backward, allreduce, step or markers; W0 stands for the weights being evaluated.
Schedule generate_forward_only(int stages, int microbatches);

bool is_compute(ActionKind kind);        // forward and the backward kinds
bool is_backward(ActionKind kind);       // backward, backward_input, backward_weight
bool is_communication(ActionKind kind);  // sends, receives and exchanges

// Batch (0-based) of microbatch mb (1-based).
inline int batch_of(int microbatches, int mb) {
  return (mb - 1) / microbatches;
}
// Logical weight version the schedule kind prescribes for microbatch mb (see the conventions).
int weight_version(ScheduleKind kind, int microbatches, int sync_warmup, int mb);
// Physical buffer (0 or 1) holding weight version `version`.
int weight_buffer(ScheduleKind kind, int sync_warmup, int version);
// Versions held by buffers 0 and 1 (-1: empty) when a schedule starts at run batch first_batch,
// i.e. as the uninterrupted run has them after the step of batch first_batch-1: W(first_batch)
// in buffer 0 for flush, GPipe and 2bw while first_batch <= K; for 2bw with first_batch > K,
// W(first_batch) and W(first_batch-1) in their weight_buffer().
std::array<int, 2> initial_buffers(ScheduleKind kind, int sync_warmup, int first_batch);
// Most activations stage `stage` may hold: min(d - s, m) for flush and 2bw, m for GPipe, 1 for
// forward-only (a microbatch holds its activation from its forward until it is sent).
int activation_bound(ScheduleKind kind, int stages, int microbatches, int stage);

// Largest number of microbatches forwarded but not yet backwarded on `stage`.
int max_in_flight(const Schedule& schedule, int stage);
// Weight buffers `stage` needs: 1 plus the highest buffer index its steps write (1 or 2).
int weight_buffers_needed(const Schedule& schedule, int stage);

}  // namespace p2bw::schedule
