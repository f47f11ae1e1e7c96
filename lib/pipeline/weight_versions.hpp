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
//
// bf16 (model.precision) keeps the master too, and its versions are bf16 compute copies
// bf16(W(v)) (or bf16(C(v))), which cannot take fp32 gradients: the versions and the gradients
// have pools of their own. Two bf16 buffers (the update writes the next copy while the current
// one is held) and one fp32 gradient buffer, two with a 2bw phase (batch t+1 accumulates while
// batch t's deferred reduction still holds its gradients): per parameter 2·2 + 4 (master) + 4 or
// 2·4 bytes.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "core/device.hpp"
#include "core/store_view.hpp"

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
  // Buffers of `values` each, named for Kokkos's tools. fp32 (bf16 false): `buffers` float
  // buffers (2 or 3) shared by the versions and the gradients. bf16: two bf16 version buffers and
  // buffers - 1 fp32 gradient buffers. With `master`, one more fp32 buffer for the true weights.
  // Every buffer is free until used.
  WeightVersions(std::int64_t values, int buffers, bool master = false, bool bf16 = false);

  bool holds(int version) const { return held_.count(version) != 0; }
  // The buffer of W(version); InternalError naming the versions held when it is not held.
  StoreView at(int version) const;
  int newest() const;                 // -1 when none
  int oldest() const;                 // -1 when none
  std::vector<int> versions() const;  // held, oldest first

  // A free version buffer becomes W(version) (for the initial weights and restoring checkpoints).
  StoreView add(int version);
  // The buffer that gradients accumulate into (null until make_gradients()).
  FloatView gradients() const { return gradients_; }
  // Takes a free gradient buffer, zeroes it and makes it the gradient buffer.
  void make_gradients(const Exec& exec);
  // Hands out the gradient buffer (its batch's reductions and update own it now); there is no
  // gradient buffer until make_gradients().
  FloatView detach_gradients();
  // Where the update of the detached `gradients` writes the next version: fp32, the gradient
  // buffer itself (written over); bf16, a free bf16 buffer, and the gradient buffer is free again
  // (the update, queued before any later use of it, reads it first).
  StoreView next_version_buffer(FloatView gradients);
  // A buffer from next_version_buffer(), written by the update, becomes W(version).
  void hold(int version, StoreView buffer);
  // Frees the buffers of every version older than `version`, the newest excepted.
  void retire_older_than(int version);

  // The true W(newest) under weight prediction and bf16; empty otherwise.
  FloatView master() const { return master_; }
  // The newest true weights as floats: the master, or else the newest version.
  FloatView true_weights() const { return master_.data() ? master_ : at(newest()).as<float>(); }

  // The true weights in the storage type, for an evaluation between batches (no gradient
  // accumulates then): fp32, true_weights() itself; bf16, bf16(master) written into the memory
  // of the idle, zeroed gradient buffer (half of it), so an evaluation allocates nothing.
  // end_evaluation() zeroes that buffer again.
  StoreView evaluation_weights(const Exec& exec) const;
  void end_evaluation(const Exec& exec) const;

  bool bf16() const { return bf16_; }
  std::int64_t values() const { return values_; }
  // Bytes of the version buffers, the master included, and of the gradient buffers (the shared
  // fp32 pool counts one buffer as the gradients).
  std::int64_t weight_bytes() const;
  std::int64_t gradient_bytes() const;

 private:
  std::int64_t values_;
  bool bf16_;
  int version_buffers_, gradient_buffers_;
  std::map<int, StoreView> held_;  // version -> buffer
  FloatView gradients_;
  std::vector<StoreView> free_;            // version buffers (fp32: also the gradients')
  std::vector<FloatView> free_gradients_;  // bf16 only
  FloatView master_;
};

}  // namespace p2bw::pipeline
