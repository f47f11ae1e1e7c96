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
#include "core/store_view.hpp"
#include "core/stream_mark.hpp"
#include "kernels/encoder.hpp"
#include "model/kernel_timer.hpp"
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
  StoreView values;      // (cache_values) stored activations of every part, the stage input first
  FloatView statistics;  // (cache_statistics) LayerNorm means and rstds, log-sum-exps (32-bit)
  IntView tokens;        // (B, T) input tokens (stage with the embedding)
  kernels::EncoderBuckets<Exec> buckets;  // of tokens, for the embedding's backward (load)
  IntView targets;         // (B, T) targets, data::kIgnore without loss (stage with the head)
  DoubleView positions;    // (1) targets with a loss, counted on the device by forward (head)
  int loss_positions = 0;  // the same on the host: set by the blocking forward only

  std::int64_t bytes() const;  // of its buffers
};

// Sets the kernels up for the deck's model.precision before a StageModel computes: TF32 GEMMs for
// tf32, fp32 GEMMs for fp32 and bf16 (whose GEMMs take bf16 operands and accumulate in fp32).
void set_kernel_precision(const config::Deck& deck);

// Bytes of the transient buffers a StageModel of this shape allocates once (any part range; the
// stage with the head also holds one microbatch's logits), stored values in `precision`.
std::int64_t stage_workspace_bytes(const ModelShape& shape, bool has_head,
                                   config::Precision precision);
// What the GEMM libraries hold for a stage with `blocks` blocks and maybe the head when its
// GEMMs run on `library`, as predicted (kernels::predicted_library_workspace_bytes); what a
// StageModel's hold is kernels::library_workspace_bytes.
std::int64_t stage_library_workspace_bytes(const ModelShape& shape, int blocks, bool has_head,
                                           config::Precision precision,
                                           kernels::GemmLibrary library);

// model.precision: bf16 is mixed precision as in llm.c: every value a GPU keeps in 16 bits is a
// bf16 buffer (StoreView, kernels/storage.hpp: kernels compute in fp32 and round to nearest even
// where they store), GEMMs accumulate in fp32:
// - forward: every activation kept for backward or passed on (embedding output, LayerNorm
//   outputs, qkv, attention output, both projections, both residual sums, the fc pre-activation
//   with its bias and its GELU, the logits); LayerNorm statistics, the log-sum-exp and the losses
//   are fp32;
// - backward: every activation gradient (the logits' gradient, each GEMM's and LayerNorm's input
//   gradient, GELU's, attention's, the residual sums; so stage-boundary gradients too);
//   parameter gradients accumulate, reduce and clip in fp32;
// - weights: the weights used in compute are a bf16 copy of the fp32 master (the optimizer
//   writes it, model::Optimizer); optimizer state fp32.
// fp32 and tf32 store floats.
class StageModel {
 public:
  // Parts [first_part, end_part) of model_parts(shape): 0 is the embedding, 1 + l block l,
  // layers + 1 the head.
  StageModel(const config::ModelConfig& model, int microbatch_size, int first_part, int end_part);

  const ModelShape& shape() const { return shape_; }
  // model.precision: bf16: activations and compute weights are bf16 buffers.
  bool bf16() const { return bf16_; }
  // A buffer of `values` values in the storage type, uninitialised.
  StoreView make_stored(const std::string& label, std::int64_t values) const {
    return StoreView::allocate(label, values, bf16_);
  }
  // The weights used in compute from the fp32 `master` (num_params): bf16(master) under bf16,
  // a copy in fp32 and tf32 (nothing when `compute` is the master's own buffer).
  void write_compute_weights(const Exec& exec, const StoreView& compute,
                             ConstFloatView master) const;
  // The initial weights (init): into `master` and from it into `compute` when there is a master
  // (bf16, weight prediction), else into `compute` itself (fp32 storage).
  void init_weights(const Exec& exec, const StoreView& compute, FloatView master,
                    std::uint64_t seed) const;
  bool has_embedding() const { return first_part_ == 0; }
  bool has_head() const { return end_part_ == shape_.layers + 2; }
  std::int64_t num_params() const { return params_; }
  // Tensors with offsets inside this stage's flat buffer, in order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // Values of the boundary activation (B, T, C) that enters and leaves a stage.
  std::int64_t boundary_values() const {
    return shape_.microbatch * shape_.seq_len * shape_.hidden;
  }
  // A boundary buffer (B, T, C) in the storage type, uninitialised.
  StoreView make_boundary(const std::string& label) const {
    return make_stored(label, boundary_values());
  }
  std::int64_t workspace_bytes() const {
    return workspace_.bytes() + 4 * static_cast<std::int64_t>(workspace_stats_.extent(0));
  }

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

  // Everything forward and backward use: activations, statistics and the inputs.
  Cache make_cache() const;
  // What recomputation stashes per microbatch, and no more: the inputs the re-forward needs (the
  // tokens with their buckets on the stage with the embedding, else the stage input (B, T, C) in
  // `values`) and the targets (stage with the head).
  Cache make_input_stash() const;
  // Loads a microbatch held on the host into the cache: its tokens (B, T) with their buckets for
  // the embedding's backward, sorted here on the host (stage with the embedding), and its targets
  // (B, T) (stage with the head; nullptr leaves cache.targets as they are). The copies to the
  // device are queued on exec from host staging slots used in turn (pinned on GPUs), so the
  // caller may refill its arrays as soon as load returns, and load waits for no kernel: at most,
  // when the host runs that far ahead, for the copies of the load kLoadSlots before. Backward
  // reads the buckets: a cache trained on takes its tokens here.
  void load(const Exec& exec, Cache& cache, const int* tokens, const int* targets);
  static constexpr int kLoadSlots = 2;
  // Where a received boundary activation (B, T, C) goes: the first part's input slot.
  StoreView input_slot(const Cache& cache) const;

  // Forward of one microbatch. Reads cache.tokens (embedding) or input_slot (otherwise), fills
  // the cache and writes the stage output `out` (B, T, C) unless the stage has the head. With the
  // head, adds the microbatch's mean loss over the positions with targets to loss_sum(0) on the
  // device, without blocking (loss_sum may be empty: the loss is dropped, e.g. recomputation).
  void forward(const Exec& exec, const StoreView& params, Cache& cache, const StoreView& out,
               DoubleView loss_sum);
  // The same, blocking (evaluation, tests, profiling): returns the mean loss (0 without the
  // head) and sets cache.loss_positions, with one copy to the host.
  double forward(const Exec& exec, const StoreView& params, Cache& cache, const StoreView& out);

  // The head's logits (B, T, Vp) of the latest forward, in the shared workspace: valid until the
  // next forward or backward of any microbatch.
  StoreView logits() const;

  // Forward for inference (a stage with the head): writes the head's logits (B, T, Vp) into
  // `logits` (as floats); cache.targets is overwritten (no position has a target). The cache is
  // not ready for backward afterwards.
  void forward_logits(const Exec& exec, const StoreView& params, Cache& cache, FloatView logits);

  // Backward of one microbatch; consumes the cache. Adds parameter gradients into `grads`.
  // With the head, the loss gradient is `loss_scale` times that of the mean loss (1/m for
  // accumulation over m microbatches); otherwise `dout` (B, T, C) is the output gradient. Writes
  // the input gradient into `din` (B, T, C) unless the stage has the embedding.
  void backward(const Exec& exec, const StoreView& params, FloatView grads, Cache& cache,
                const StoreView& dout, const StoreView& din, double loss_scale);

  // Per-kernel timing (p2bw bench --kernels): marks the end of each kernel launched on `timer`
  // while it runs; null (the default) marks nothing.
  void set_kernel_timer(KernelTimer* timer) { timer_ = timer; }

 private:
  void add_inputs(Cache& cache) const;  // tokens with buckets, targets: as this stage has them
  void mark(const char* kernel) const {
    if (timer_ != nullptr) timer_->mark(kernel);
  }

  struct PartRef {
    PartLayout layout;
    std::int64_t param_offset;       // in the stage's flat buffer
    std::int64_t cache_offset;       // in Cache::values
    std::int64_t statistics_offset;  // in Cache::statistics
  };

  // The bodies, once per storage type (float or kernels::bf16).
  template <class Store>
  void forward_parts(const Exec& exec, const StoreView& params, Cache& cache, const StoreView& out,
                     DoubleView loss_sum);
  template <class Store>
  void backward_parts(const Exec& exec, const StoreView& params, FloatView grads, Cache& cache,
                      const StoreView& dout, const StoreView& din, double loss_scale);
  template <class Store>
  void head_forward(const Exec& exec, const PartRef& part, const Store* params, Cache& cache,
                    DoubleView loss_sum);
  template <class Store>
  void block_forward(const Exec& exec, const PartRef& part, const Store* params, Cache& cache,
                     Store* out);
  template <class Store>
  void head_backward(const Exec& exec, const PartRef& part, const Store* params, FloatView grads,
                     Cache& cache, Store* din, double loss_scale);
  template <class Store>
  void block_backward(const Exec& exec, const PartRef& part, const Store* params, FloatView grads,
                      Cache& cache, const Store* dout, Store* din);

  ModelShape shape_;
  bool bf16_;  // model.precision: bf16
  int first_part_, end_part_;
  std::vector<PartRef> parts_;
  std::vector<TensorInfo> tensors_;
  std::int64_t params_ = 0;
  std::int64_t cache_values_ = 0, cache_statistics_ = 0;
  // Transient buffers of forward and backward, shared by all microbatches: stored values and the
  // 32-bit rest (losses, attention's and the column sums' scratch).
  StoreView workspace_;
  FloatView workspace_stats_;
  DoubleView reduction_scratch_;      // partials of grad_square_sums and of the mean loss
  DoubleView loss_scratch_;           // (1) where a dropped or blocking forward's loss goes
  HostMirror<DoubleView> host_loss_;  // (2) the blocking forward's copy: loss, positions
  // One of load's host staging slots, refilled once `copied` says the copies queued from it are
  // done: the tokens and targets (B, T) of the stage's ends, and the buckets' host sort.
  struct LoadSlot {
    Kokkos::View<int*, StagingSpace> tokens, targets;  // (B, T) or empty
    kernels::EncoderBucketer<Exec, StagingSpace> bucketer;
    StreamMark copied;
  };
  std::vector<LoadSlot> load_slots_;  // (kLoadSlots)
  size_t next_load_slot_ = 0;
  KernelTimer* timer_ = nullptr;  // set_kernel_timer
};

}  // namespace p2bw::model
