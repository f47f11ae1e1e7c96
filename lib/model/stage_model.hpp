// A contiguous range of model parts (the whole model, or one pipeline stage) over one flat
// parameter buffer: forward and backward of one microbatch through its parts, with the
// activations saved for backward in a per-microbatch Cache. A StageModel never knows which rank
// or stage it runs on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "core/device.hpp"
#include "kernels/encoder.hpp"
#include "model/model_shape.hpp"
#include "model/parameters.hpp"

namespace p2bw::model {

using p2bw::ConstFloatView;
using p2bw::Exec;
using p2bw::FloatView;
using p2bw::IntView;
using p2bw::Memory;

// What one microbatch keeps from forward for backward.
struct Cache {
  FloatView floats;        // (cache_floats) saved activations of every part, the stage input first
  IntView tokens;          // (B, T) input tokens (stage with the embedding)
  IntView targets;         // (B, T) targets, data::kIgnore without loss (stage with the head)
  DoubleView positions;    // (1) targets with a loss, counted on the device by forward (head)
  int loss_positions = 0;  // the same on the host: set by the blocking forward only
};

// Sets the kernels up for the deck's model.precision before a StageModel computes: TF32 GEMMs for
// tf32, fp32 GEMMs for fp32 and bf16. bf16 is an emulation in float storage (see StageModel): its
// numbers are bf16's, its memory and speed are not, so only training takes it (`emulated_bf16`);
// otherwise bf16 is refused, `who` (p2bw bench, profile) naming what refuses: UserError "WHERE:
// model.precision: ..." (exit 2).
void set_kernel_precision(const config::Deck& deck, const std::string& who,
                          bool emulated_bf16 = false);

// Floats of the transient buffers a StageModel of this shape allocates once (any part range;
// the stage with the head also holds one microbatch's logits).
std::int64_t stage_workspace_floats(const ModelShape& shape, bool has_head);

// model.precision: bf16 is GPU mixed precision emulated in float storage: every value the GPU
// would store in bf16 is rounded to the nearest bf16 (kernels/bf16_round.hpp) where it is written,
// arithmetic and GEMM accumulation stay fp32, and the buffers stay float (bf16-valued floats, so
// no memory is saved; p2bw check predicts the real bf16 layout). As in llm.c's mixed precision:
// - forward: every activation kept for backward or passed on (embedding output, LayerNorm
//   outputs, qkv, attention output, both projections, both residual sums, the fc pre-activation
//   and its GELU, the logits); LayerNorm statistics, the log-sum-exp and the losses stay fp32;
// - backward: every activation gradient (the logits' gradient, each GEMM's and LayerNorm's input
//   gradient, GELU's, attention's, the residual sums; so stage-boundary gradients too);
//   parameter gradients accumulate, reduce and clip in fp32;
// - weights: the weights used in compute are bf16(fp32 master) (the optimizer writes them,
//   model::Optimizer); optimizer state fp32.
// fp32 and tf32 runs round nothing.
class StageModel {
 public:
  // Parts [first_part, end_part) of model_parts(shape): 0 is the embedding, 1 + l block l,
  // layers + 1 the head.
  StageModel(const config::ModelConfig& model, int microbatch_size, int first_part, int end_part);

  const ModelShape& shape() const { return shape_; }
  // model.precision: bf16 (the emulation above).
  bool rounds_to_bf16() const { return bf16_; }
  // Rounds a compute copy of this stage's weights to bf16 in place under bf16; nothing otherwise.
  void round_compute_weights(const Exec& exec, FloatView weights) const;
  bool has_embedding() const { return first_part_ == 0; }
  bool has_head() const { return end_part_ == shape_.layers + 2; }
  std::int64_t num_params() const { return params_; }
  // Tensors with offsets inside this stage's flat buffer, in order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // Floats of the boundary activation (B, T, C) that enters and leaves a stage.
  std::int64_t boundary_floats() const {
    return shape_.microbatch * shape_.seq_len * shape_.hidden;
  }
  std::int64_t cache_floats() const { return cache_floats_; }
  std::int64_t workspace_floats() const { return workspace_floats_; }

  // Parts of this stage (the length of grad_square_sums' result).
  int parts() const { return static_cast<int>(parts_.size()); }

  // sums(p) = the squared L2 norm of part p's gradient, in part order, the head's tied copy of
  // the embedding excluded (it is counted once, in the embedding). On the device without
  // blocking, in scratch the model keeps; deterministic.
  void grad_square_sums(const Exec& exec, ConstFloatView grads, DoubleView sums) const;

  // When the stage holds both copies of the tied embedding (d = 1), gives both the sum of their
  // gradients (a + b, as the two-rank all-reduce of a pipeline computes it). Returns false when
  // it does not hold both.
  bool sum_tied_gradients(const Exec& exec, FloatView grads) const;

  // The tensor with this global name, or nullptr.
  const TensorInfo* find(const std::string& name) const;

  // Fills `params` (num_params) with the initial values (parameters.hpp).
  void init(FloatView params, std::uint64_t seed) const;

  Cache make_cache() const;
  // Where a received boundary activation (B, T, C) goes: the first part's input slot.
  FloatView input_slot(const Cache& cache) const;

  // Forward of one microbatch. Reads cache.tokens (embedding) or input_slot (otherwise), fills
  // the cache and writes the stage output `out` (B, T, C) unless the stage has the head. With the
  // head, adds the microbatch's mean loss over the positions with targets to loss_sum(0) on the
  // device, without blocking (loss_sum may be empty: the loss is dropped, e.g. recomputation).
  void forward(const Exec& exec, ConstFloatView params, Cache& cache, FloatView out,
               DoubleView loss_sum);
  // The same, blocking (evaluation, tests, profiling): returns the mean loss (0 without the
  // head) and sets cache.loss_positions, with one copy to the host.
  double forward(const Exec& exec, ConstFloatView params, Cache& cache, FloatView out);

  // The head's logits (B, T, Vp) of the latest forward, in the shared workspace: valid until the
  // next forward or backward of any microbatch.
  FloatView logits() const;

  // Forward for inference (a stage with the head): writes the head's logits (B, T, Vp) into
  // `logits`; cache.targets is overwritten (no position has a target). The cache is not ready for
  // backward afterwards.
  void forward_logits(const Exec& exec, ConstFloatView params, Cache& cache, FloatView logits);

  // Backward of one microbatch; consumes the cache. Adds parameter gradients into `grads`.
  // With the head, the loss gradient is `loss_scale` times that of the mean loss (1/m for
  // accumulation over m microbatches); otherwise `dout` (B, T, C) is the output gradient. Writes
  // the input gradient into `din` (B, T, C) unless the stage has the embedding.
  void backward(const Exec& exec, ConstFloatView params, FloatView grads, Cache& cache,
                ConstFloatView dout, FloatView din, double loss_scale);

 private:
  struct PartRef {
    PartLayout layout;
    std::int64_t param_offset;  // in the stage's flat buffer
    std::int64_t cache_offset;  // in Cache::floats
  };

  void head_forward(const Exec& exec, const PartRef& part, ConstFloatView params, Cache& cache,
                    DoubleView loss_sum);
  void block_forward(const Exec& exec, const PartRef& part, ConstFloatView params, Cache& cache,
                     float* out);
  void head_backward(const Exec& exec, const PartRef& part, ConstFloatView params, FloatView grads,
                     Cache& cache, float* din, double loss_scale);
  void block_backward(const Exec& exec, const PartRef& part, ConstFloatView params, FloatView grads,
                      Cache& cache, const float* dout, float* din);

  // The bf16 emulation's store: rounds `values` in place under bf16, nothing otherwise.
  void store(const Exec& exec, kernels::Flat<float, Exec> values) const;

  ModelShape shape_;
  bool bf16_;  // model.precision: bf16
  int first_part_, end_part_;
  std::vector<PartRef> parts_;
  std::vector<TensorInfo> tensors_;
  std::int64_t params_ = 0;
  std::int64_t cache_floats_ = 0;
  std::int64_t workspace_floats_ = 0;
  FloatView workspace_;  // transient buffers of forward and backward, shared by all microbatches
  DoubleView reduction_scratch_;           // partials of grad_square_sums and of the mean loss
  DoubleView loss_scratch_;                // (1) where a dropped or blocking forward's loss goes
  HostMirror<DoubleView> host_loss_;       // (2) the blocking forward's copy: loss, positions
  kernels::EncoderBuckets<Exec> buckets_;  // positions by token for the embedding's backward
};

}  // namespace p2bw::model
