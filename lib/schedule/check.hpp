// Schedule checker: proves a schedule complete, deadlock-free under blocking sends, and
// version-correct; returns what is wrong as data.
//
// Communication semantics (the same in check() and simulate()):
// - Channels. Each link s <-> s+1 carries two channels: activations s -> s+1 and gradients
//   s+1 -> s. On a channel the n-th send matches the n-th receive (in-order matching, no tags);
//   a send and a receive that match must name the same microbatch, otherwise the receiver would
//   get the wrong tensor.
// - Blocking rendezvous. A stage executes its list in order. Reaching a send or receive posts
//   it; the stage then waits until the peer has posted the matching receive or send. A send
//   therefore completes only when its receive is posted, and vice versa.
// - Exchange (send_act_recv_grad, send_grad_recv_act). Posts its send and its receive at the
//   same time (one grouped non-blocking call) and completes once BOTH are matched. A peer's
//   exchange likewise offers its receive and its send at once, so two exchanges facing each
//   other complete together, where two plain sends facing each other deadlock.
// - Compute, allreduce, step and markers are local and never wait.
// - NCCL's matching rule. NCCL pairs the messages between two ranks by the order each side
//   issues them, with no tag. A stage issues its message actions in list order, an exchange's
//   send before its receive (what PipelineTrainer and Transport::post_exchange issue), so for
//   each ordered pair of stages the n-th message one issues to the other must be the n-th the
//   other issues from it: the same kind of the same microbatch. The rule is keyed by the pair of
//   ranks, not the kind: on a rank whose previous and next stage were the same rank, activations
//   and gradients would form one sequence. (MPI matches by tag and would tolerate a mismatch;
//   NCCL would silently deliver the wrong tensor.) The blocking rendezvous is also the safe model
//   of one NCCL communication stream, whose operations (or groups) run one after another.
// The checker replays all stages under these rules; a schedule that cannot run to the end
// deadlocks, and every blocked stage is reported with the action it waits in.
//
// What check() verifies (findings name stage and action index):
// - header values, one action list per stage, microbatch and batch numbers in range (a schedule
//   covers batches first_batch .. batches-1 and microbatches first_batch*m+1 .. batches*m);
// - messages: only to existing neighbours; each microbatch's activation/gradient sent once after
//   its forward/backward and received once before it is used; every send has exactly one
//   matching receive and vice versa; per ordered pair of stages the sends and the receives come
//   in the same order (NCCL's rule), so in-order matching delivers the right microbatch; no
//   deadlock;
// - compute: every microbatch of the schedule forwarded and backwarded exactly once per stage,
//   each backward after its forward (Bw after Bi for split backwards), activations in flight
//   within activation_bound();
// - versions: forwards follow weight_version() (the global rule, also after a resume); a backward
//   uses its forward's version; the buffers start as initial_buffers(kind, K, first_batch) and
//   every version used is held by a buffer; at most two versions alive under 2bw (alive = used by
//   an in-flight microbatch, or the newest), one under flush and GPipe; a step writes W(newest+1),
//   names correctly what it retires, and never overwrites a version an in-flight microbatch
//   still needs; steps of flush batches (and all batches of flush/gpipe) only with nothing in
//   flight; flush and GPipe write buffer 0 only;
// - per batch exactly one allreduce after the batch's m-th backward, then one step, both inside
//   batch_begin/batch_end markers that come in order from batch_begin first_batch.
// A forward-only schedule (an evaluation) is held to the same message, version and deadlock rules,
// with forwards, activation sends and receives only: every microbatch forwarded once per stage
// on W0, its activation sent once after its forward and received once before it, at most one
// activation in flight (from a forward until its send); no gradients, reductions or markers.
#pragma once

#include <string>
#include <vector>

#include "schedule/schedule.hpp"

namespace p2bw::schedule {

struct Finding {
  int stage = -1;   // -1: the schedule as a whole
  int action = -1;  // index into actions[stage]; -1: the end of the stage's list
  std::string message;
};

std::string to_string(const Finding& finding);  // "stage 1 action 7: [B 3 v1] ..."

struct CheckResult {
  std::vector<Finding> findings;

  bool ok() const { return findings.empty(); }
  // "ok", or "N findings; first: <finding>".
  std::string summary() const;
};

CheckResult check(const Schedule& schedule);

}  // namespace p2bw::schedule
