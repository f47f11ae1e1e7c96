// The flat buffers of one stage's weights and gradients, by logical version. Flush and gpipe need
// two buffers (W(t) and the gradient), 2bw three (W(t-1), W(t) and the gradient); no update ever
// copies weights. The update after batch t writes W(t+1) in place over batch t's gradients (the
// optimizer is elementwise and reads each gradient before writing its weight), that buffer is
// then W(t+1), and the buffer of a version no microbatch needs any more is zeroed to accumulate
// the next batch's gradients. So a deferred update (2bw) needs no extra copy either: batch t+1
// accumulates into the retired version's buffer while batch t's gradients are still reduced.
//
// With weight prediction (2bw's pipeline.weight_prediction = gamma > 0) the versions are compute
// versions: C(v) = W(v) + gamma (W(v) - W(v-1)) for v > K (K = the flush warm-up), W(v) itself
// up to K, and a fourth buffer, the master, holds the true W(newest). Each update writes the
// master in place and C(v) over the batch's gradients, so the rotation above is unchanged.
// bf16 (model.precision) keeps the master too: every version is a compute copy bf16(W(v)) (or
// bf16(C(v))), written by the same update.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "core/device.hpp"

namespace p2bw::pipeline {

// The batches a 2bw run trains with flush semantics first: pipeline.sync_warmup_steps, at most
// train.steps; 0 for flush and gpipe.
int sync_warmup_batches(const config::Deck& deck);
// Whether a run has a 2bw phase (two weight versions): 2bw whose warm-up ends before the last step.
bool has_two_bw_phase(const config::Deck& deck);
// Whether a run predicts weights: a 2bw phase with a weight prediction.
bool predicts_weights(const config::Deck& deck);
// Whether a run keeps an fp32 master copy: under weight prediction, and under model.precision:
// bf16, whose compute versions are bf16(master) (or bf16 of the predicted C(v)): the optimizer
// updates the master in place and writes the rounded compute version over the gradients.
bool keeps_master(const config::Deck& deck);
// The gamma with which the update that writes W(version) writes compute version C(version): the
// deck's for versions after the warm-up (a batch runs on C(v) only when W(v) is stale), else 0.
double prediction_gamma(const config::Deck& deck, int version);

class WeightVersions {
 public:
  // `buffers` flat buffers of `floats` each (2 or 3), named for Kokkos's tools; the first holds
  // nothing yet, the others are free until used. With `master`, one more buffer for the true
  // weights.
  WeightVersions(std::int64_t floats, int buffers, bool master = false);

  bool holds(int version) const { return held_.count(version) != 0; }
  // The buffer of W(version); InternalError naming the versions held when it is not held.
  FloatView at(int version) const;
  int newest() const;                 // -1 when none
  int oldest() const;                 // -1 when none
  std::vector<int> versions() const;  // held, oldest first

  // A free buffer becomes W(version) (for the initial weights and for restoring checkpoints).
  FloatView add(int version);
  // The buffer that gradients accumulate into (null until make_gradients()).
  FloatView gradients() const { return gradients_; }
  // Takes a free buffer, zeroes it and makes it the gradient buffer.
  void make_gradients(const Exec& exec);
  // Hands out the gradient buffer (its batch's reductions and update own it now); there is no
  // gradient buffer until make_gradients().
  FloatView detach_gradients();
  // A detached gradient buffer, written over by the update, becomes W(version).
  void hold(int version, FloatView buffer);
  // Frees the buffers of every version older than `version`, the newest excepted.
  void retire_older_than(int version);

  // The true W(newest) under weight prediction; empty without.
  FloatView master() const { return master_; }
  // The newest true weights: the master, or else the newest version.
  FloatView true_weights() const { return master_.data() ? master_ : at(newest()); }

  int buffers() const { return buffers_; }  // allocated, in use or free; the master excepted
  std::int64_t floats() const { return floats_; }

 private:
  FloatView take_free();

  std::int64_t floats_;
  int buffers_;
  std::map<int, FloatView> held_;  // version -> buffer
  FloatView gradients_;
  std::vector<FloatView> free_;
  FloatView master_;
};

}  // namespace p2bw::pipeline
