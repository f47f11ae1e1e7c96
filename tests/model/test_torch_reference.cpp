// End-to-end agreement with PyTorch (tests/model/torch_reference.py, float64) for a tiny GPT and
// a tiny BERT with identical weights and tokens: log-probabilities (the logits up to each row's
// constant, which is all the loss sees), the loss, every parameter gradient of the first step,
// and the weights after 5 AdamW steps with warm-up and global-norm clipping. Tolerances scale
// with float32 epsilon and the reduction length. model.precision: bf16 against the same model
// with p2bw's bf16 rounding points (torch_reference.py, bf16 = 1) with tolerances derived from
// bf16's unit roundoff and the number of rounding points, and against the unrounded model, from
// which bf16 must differ by far more than fp32's tolerance (so the comparison can fail). Skips,
// saying why, without a Python that has torch and h5py. GELU runs as gelu.hpp's kernels, whose
// rounding points the reference mirrors, also where cuBLASLt could fuse it (bf16 on a GPU).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <memory>

#include "data/loader.hpp"
#include "io/hdf5_file.hpp"
#include "kernels/gemm.hpp"
#include "model/lr_schedule.hpp"
#include "pipeline/single_rank_trainer.hpp"

namespace p2bw {
namespace {

namespace fs = std::filesystem;

// English text, tokenized as bytes.
const char* kText =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
    "of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season "
    "of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we "
    "had "
    "everything before us, we had nothing before us, we were all going direct to Heaven, we were "
    "all going "
    "direct the other way. There were a king with a large jaw and a queen with a plain face, on "
    "the throne "
    "of England; there were a king with a large jaw and a queen with a fair face, on the throne of "
    "France.";

std::string python_with_torch() {
  for (const char* candidate : {"/usr/bin/python3", "python3"}) {
    const std::string command = std::string(candidate) + " -c 'import torch, h5py' >/dev/null 2>&1";
    if (std::system(command.c_str()) == 0) return candidate;
  }
  return "";
}

config::Deck tiny_deck(config::ModelKind kind) {
  config::Deck deck;
  deck.model = {kind, 2, 16, 2, 8, 300};  // vocab 300 pads to 320: padded columns are exercised
  deck.pipeline.schedule = config::ScheduleKind::flush;
  deck.pipeline.microbatches = 2;
  deck.train.microbatch_size = 2;
  deck.train.steps = 5;
  deck.train.seed = 11;
  deck.train.lr = 1e-2;
  deck.train.lr_warmup_steps = 2;
  deck.train.lr_min = 1e-3;
  deck.train.grad_clip = 0.5;  // below the first norms: clipping is active
  deck.train.optimizer.weight_decay = 0.1;
  return deck;
}

std::vector<float> to_host(model::ConstFloatView view, std::int64_t offset, std::int64_t count) {
  std::vector<float> values(static_cast<size_t>(count));
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  std::copy(host.data() + offset, host.data() + offset + count, values.begin());
  return values;
}

// max |a - b| over the tensor / (tol · max(max |b|, floor)): at most 1 passes.
double error_ratio(const std::vector<float>& ours, const std::vector<double>& ref, double tol,
                   double floor) {
  EXPECT_EQ(ours.size(), ref.size());
  double error = 0, scale = floor;
  for (size_t i = 0; i < std::min(ours.size(), ref.size()); ++i) {
    error = std::max(error, std::abs(ours[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return error / (tol * scale);
}

// The tolerances of one comparison, relative (see compare_with_torch).
struct Tolerances {
  double logprobs;  // of the first microbatch's log-probabilities and loss, times max |value|
  double grads;     // of the first step's gradients, times the tensor's max |gradient|
  double steps;     // of every step's loss and gradient norm
  double weights;   // of the final weights, times the sum of the learning rates
  // AdamW's direction where the gradient is uncertain: a gradient known within δg moves the
  // normalised step by up to δg / (|g| + δg) (2 where its sign is open): this factor times that.
  double direction = 0;
};

// What p2bw computed, to compare with one or more references.
struct Ours {
  std::vector<float> logprobs;  // (b·T·V) of the first microbatch at W(0)
  double loss0 = 0;
  std::vector<std::vector<float>> grads;  // of step 1, per tensor (the reference's count)
  std::vector<double> losses, norms;
  std::vector<float> final_weights;  // the master
};

// log-probabilities of (rows, V) logits with row stride Vp.
std::vector<double> logprobs(const double* logits, int rows, int V) {
  std::vector<double> result;
  for (int row = 0; row < rows; ++row) {
    const double* l = logits + static_cast<size_t>(row) * V;
    double max = -1e300, sum = 0;
    for (int v = 0; v < V; ++v) max = std::max(max, l[v]);
    for (int v = 0; v < V; ++v) sum += std::exp(l[v] - max);
    for (int v = 0; v < V; ++v) result.push_back(l[v] - max - std::log(sum));
  }
  return result;
}

// How far `ours` is from the reference in `ref`, each as a ratio to its tolerance (<= 1 passes):
// {log-probabilities, loss0, gradients (worst tensor), step losses and norms, final weights}.
struct Ratios {
  double logprobs = 0, loss0 = 0, grads = 0, steps = 0, weights = 0;
};
Ratios compare(const Ours& ours, io::H5File& ref, const config::Deck& deck,
               const model::StageModel& model, const Tolerances& tol) {
  Ratios r;
  const int b = deck.train.microbatch_size, T = deck.model.seq_len, V = deck.model.vocab;
  const auto logits = ref.read<double>("/logits");
  r.logprobs = error_ratio(ours.logprobs, logprobs(logits.data(), b * T, V), tol.logprobs, 1.0);
  const double loss0 = ref.read<double>("/loss0")[0];
  // (A BERT microbatch without masked positions has loss 0 in both.)
  r.loss0 = ours.loss0 == loss0 ? 0.0 : std::abs(ours.loss0 - loss0) / (tol.logprobs * loss0);
  size_t k = 0;
  for (const model::TensorInfo& t : model.tensors()) {
    const std::string name = t.tied_copy ? "embedding/wte" : t.name;
    r.grads = std::max(
        r.grads, error_ratio(ours.grads[k++], ref.read<double>("/grads/" + name), tol.grads, 1e-6));
  }
  const auto ref_losses = ref.read<double>("/losses");
  const auto ref_norms = ref.read<double>("/grad_norms");
  for (int step = 0; step < deck.train.steps; ++step) {
    r.steps = std::max(
        r.steps, std::abs(ours.losses[step] - ref_losses[step]) / (tol.steps * ref_losses[step]));
    // A step whose gradient norm jumps (the GPT deck's step 5 spikes about 6x) magnifies the
    // relative differences of the weights it starts from by about that factor, so a norm's
    // tolerance grows with its jump over the step before.
    const double jump = step > 0 ? std::max(1.0, ref_norms[step] / ref_norms[step - 1]) : 1.0;
    r.steps = std::max(r.steps, std::abs(ours.norms[step] - ref_norms[step]) /
                                    (tol.steps * jump * ref_norms[step]));
  }
  EXPECT_GT(ref_norms[0], deck.train.grad_clip) << "the test must exercise clipping";
  // Weights after 5 steps: AdamW moves each weight by at most about lr per step, so errors are
  // measured against the sum of the learning rates: tol.weights of it, plus what the rounding of
  // the gradient does to AdamW's normalised step. Its first step is lr·g/(|g| + ε), whose
  // derivative in g is lr·ε/(|g| + ε)²: a gradient error δg (the bound of the gradient check)
  // moves the weight by lr·ε·δg/(|g| + ε)², which matters only where |g| is near ε, i.e. for the
  // few weights whose gradient is below the gradient's own rounding (their direction is not
  // determined by the precision). |g| is the reference's first-step gradient.
  double lr_sum = 0;
  for (int step = 0; step < deck.train.steps; ++step)
    lr_sum += model::learning_rate(deck.train, step);
  const double adam_eps = deck.train.optimizer.eps;
  for (const model::TensorInfo& t : model.tensors()) {
    const std::string name = t.tied_copy ? "embedding/wte" : t.name;
    const auto expected = ref.read<double>("/final/" + name);
    const auto first_grads = ref.read<double>("/grads/" + name);
    double grad_scale = 1e-6;
    for (double g : first_grads) grad_scale = std::max(grad_scale, std::abs(g));
    const double grad_error = tol.grads * grad_scale;
    for (size_t i = 0; i < expected.size(); ++i) {
      const double g = std::abs(first_grads[i]);
      double allowed =
          lr_sum * (tol.weights + adam_eps * grad_error / ((g + adam_eps) * (g + adam_eps)));
      if (tol.direction > 0) allowed += lr_sum * tol.direction * grad_error / (g + grad_error);
      const double mine = ours.final_weights[static_cast<size_t>(t.offset) + i];
      r.weights = std::max(r.weights, std::abs(mine - expected[i]) / std::min(allowed, 2 * lr_sum));
    }
  }
  return r;
}

void expect_within(const Ratios& r, const std::string& what) {
  EXPECT_LE(r.logprobs, 1.0) << what << ": log-probabilities of the first microbatch";
  EXPECT_LE(r.loss0, 1.0) << what << ": loss of the first microbatch";
  EXPECT_LE(r.grads, 1.0) << what << ": gradients of step 1 (worst tensor)";
  EXPECT_LE(r.steps, 1.0) << what << ": losses and gradient norms of the steps";
  EXPECT_LE(r.weights, 1.0) << what << ": weights after the steps";
}

std::string text(const Ratios& r) {
  return fmt::format(
      "log-probabilities {:.3g}, loss {:.3g}, gradients {:.3g}, steps {:.3g}, "
      "weights {:.3g} (error / tolerance)",
      r.logprobs, r.loss0, r.grads, r.steps, r.weights);
}

void compare_with_torch(config::ModelKind kind, config::Precision precision) {
  const std::string python = python_with_torch();
  if (python.empty())
    GTEST_SKIP() << "no Python with torch and h5py (install python3-torch and python3-h5py)";
  config::Deck deck = tiny_deck(kind);
  deck.model.precision = precision;
  const bool bf16 = precision == config::Precision::bf16;
  // The rounding reference has gelu.hpp's rounding points (GELU of the stored pre-activation), so
  // cuBLASLt's fused GELU (bf16 on a GPU) is off here; test_kernels' MatmulGelu compares the two.
  struct GeluKernels {
    bool was = kernels::gelu_epilogue_enabled();
    GeluKernels() { kernels::set_gelu_epilogue(false); }
    ~GeluKernels() { kernels::set_gelu_epilogue(was); }
  } gelu_kernels;
  auto tokens = std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
  const auto dir = fs::temp_directory_path() / ("p2bw_torch_" + std::to_string(::getpid()));
  fs::create_directories(dir);

  pipeline::SingleRankTrainer trainer(deck, tokens);
  model::StageModel& model = trainer.model();
  const int m = deck.pipeline.microbatches, b = deck.train.microbatch_size, T = deck.model.seq_len;
  const int V = deck.model.vocab, C = deck.model.hidden, Vp = model.shape().padded_vocab;
  const auto w0 = to_host(trainer.weights(), 0, model.num_params());  // the master in bf16

  // The reference's input: initial weights (real vocabulary rows), every microbatch, the LRs;
  // `rounding` asks for p2bw's bf16 rounding points.
  const auto run_reference = [&](const std::string& name, bool rounding) {
    const std::string in = (dir / (name + "_in.h5")).string();
    const std::string out = (dir / (name + "_out.h5")).string();
    {
      io::H5File file(in, io::H5File::Mode::create);
      for (const auto& [key, value] : std::vector<std::pair<std::string, double>>{
               {"layers", deck.model.layers},
               {"hidden", C},
               {"heads", deck.model.heads},
               {"grad_clip", deck.train.grad_clip},
               {"beta1", deck.train.optimizer.beta1},
               {"beta2", deck.train.optimizer.beta2},
               {"eps", deck.train.optimizer.eps},
               {"weight_decay", deck.train.optimizer.weight_decay}})
        file.set_attribute("/", key, value);
      file.set_attribute("/", "kind", std::string(to_string(kind)));
      file.set_attribute("/", "bf16", std::int64_t{rounding ? 1 : 0});
      for (const model::TensorInfo& t : model.tensors()) {
        if (t.tied_copy) continue;
        std::vector<hsize_t> shape(t.shape.begin(), t.shape.end());
        std::int64_t count = t.count;
        if (t.name == "embedding/wte") {
          shape[0] = static_cast<hsize_t>(V);
          count = std::int64_t{V} * C;
        }
        file.write<double>(
            "/weights/" + t.name,
            std::vector<double>(w0.begin() + t.offset, w0.begin() + t.offset + count), shape);
      }
      data::Loader loader(tokens, deck);
      std::vector<std::int32_t> all_tokens, all_targets, mb_tokens(static_cast<size_t>(b * T)),
          mb_targets(mb_tokens.size());
      std::vector<double> lrs;
      for (int step = 0; step < deck.train.steps; ++step) {
        lrs.push_back(model::learning_rate(deck.train, step));
        for (int j = 0; j < m; ++j) {
          loader.microbatch(step, j, 0, mb_tokens.data(), mb_targets.data());
          all_tokens.insert(all_tokens.end(), mb_tokens.begin(), mb_tokens.end());
          all_targets.insert(all_targets.end(), mb_targets.begin(), mb_targets.end());
        }
      }
      const std::vector<hsize_t> shape{static_cast<hsize_t>(deck.train.steps),
                                       static_cast<hsize_t>(m), static_cast<hsize_t>(b),
                                       static_cast<hsize_t>(T)};
      file.write<std::int32_t>("/tokens", all_tokens, shape);
      file.write<std::int32_t>("/targets", all_targets, shape);
      file.write<double>("/lr", lrs, {lrs.size()});
    }
    const std::string command = python + " " + P2BW_TORCH_REFERENCE + " " + in + " " + out;
    EXPECT_EQ(std::system(command.c_str()), 0) << command;
    return std::make_unique<io::H5File>(out, io::H5File::Mode::read);
  };
  const auto ref = run_reference("reference", bf16);
  // bf16 is also compared with the unrounded float64 model: bf16 must be measurably rounded.
  const auto plain = bf16 ? run_reference("plain", false) : nullptr;

  Ours ours;
  // Forward of the first microbatch at W(0) (bf16: its compute copy): log-probabilities, loss.
  {
    model::StageModel probe(deck.model, b, 0, deck.model.layers + 2);
    model::Cache cache = probe.make_cache();
    data::Loader loader(tokens, deck);
    auto host_tokens = Kokkos::create_mirror_view(cache.tokens);
    auto host_targets = Kokkos::create_mirror_view(cache.targets);
    loader.microbatch(0, 0, 0, host_tokens.data(), host_targets.data());
    probe.load(model::Exec(), cache, host_tokens.data(), host_targets.data());
    ours.loss0 = probe.forward(model::Exec(), trainer.gradient_weights(), cache, StoreView());
    model::FloatView logits("logits", static_cast<size_t>(probe.logits().size()));
    widen_into(model::Exec(), logits, probe.logits());
    const auto our_logits = to_host(logits, 0, std::int64_t{b} * T * Vp);
    std::vector<double> unpadded;
    for (int row = 0; row < b * T; ++row) {
      const float* l = &our_logits[static_cast<size_t>(row) * Vp];
      for (int v = 0; v < V; ++v) unpadded.push_back(l[v]);
      for (int v = V; v < Vp; ++v) EXPECT_EQ(l[v], 0.0f) << "padded column (zero embedding rows)";
    }
    for (double value : logprobs(unpadded.data(), b * T, V))
      ours.logprobs.push_back(static_cast<float>(value));
  }
  for (int step = 0; step < deck.train.steps; ++step) {
    const pipeline::StepResult r = trainer.step();
    ours.losses.push_back(r.loss);
    ours.norms.push_back(r.grad_norm);
    if (step == 0) {
      // Gradients of step 1; the tied embedding's two copies both hold the sum.
      const auto grads = to_host(trainer.gradients(), 0, model.num_params());
      for (const model::TensorInfo& t : model.tensors()) {
        const std::string name = t.tied_copy ? "embedding/wte" : t.name;
        const auto count = static_cast<std::int64_t>(ref->read<double>("/grads/" + name).size());
        ours.grads.emplace_back(grads.begin() + t.offset, grads.begin() + t.offset + count);
        for (std::int64_t i = count; i < t.count; ++i)
          ASSERT_EQ(grads[static_cast<size_t>(t.offset + i)], 0.0f) << "padded row";
      }
    }
  }
  ours.final_weights = to_host(trainer.weights(), 0, model.num_params());

  // fp32: float rounding against float64. Tolerances scale with float32 epsilon and the reduction
  // length: the first forward's log-probabilities with sqrt(C), the gradients with sqrt(b·T·m·C)
  // (the b·T positions of a microbatch times m microbatches); the steps' losses and norms and the
  // weights 1e-4.
  const double eps = std::numeric_limits<float>::epsilon();
  const Tolerances fp32{8 * eps * std::sqrt(double(C)), 4 * eps * std::sqrt(double(b * T * m * C)),
                        1e-4, 1e-4};
  if (!bf16) {
    const Ratios r = compare(ours, *ref, deck, model, fp32);
    expect_within(r, "fp32 against float64");
    std::printf("fp32 against float64: %s\n", text(r).c_str());
  } else {
    // bf16: u = 2^-8 is bf16's spacing relative to a value (8 bits of significand); rounding to
    // nearest moves a value by at most u/2. Rounding points on the way (model::StageModel), for
    // L blocks: forward n_f = 1 (embedding) + 10 L (ln1, qkv, attention, its projection, the
    // residual sum, ln2, fc with its bias, GELU, the MLP projection, the residual sum) + 2 (lnf,
    // logits) + 1 (the compute copy of the weights); backward n_b = 10 L (the activation
    // gradients of a block) + 3 (logits, lnf, the head's input).
    const int L = deck.model.layers;
    const double u = std::ldexp(1.0, -8);
    const double n_f = 1 + 10 * L + 2 + 1, n_b = 10 * L + 3;
    // Against the reference with the same rounding points: both round the same values, so they
    // differ only where p2bw's fp32 value and the reference's float64 value lie on two sides of
    // a rounding boundary, which happens with probability d / ulp for a difference d, and then
    // by one ulp: rounding keeps the expected absolute difference d. So each rounding point adds
    // at most the fp32 difference again: (1 + n) times the fp32 tolerance, with n = n_f for the
    // forward and n_f + n_b for the gradients; the steps' losses and norms and the weights
    // accumulate that over the deck's S steps: (1 + n_f + n_b) S times fp32's, and AdamW's
    // direction for weights whose gradient is within the gradient tolerance of 0.
    const double S = deck.train.steps;
    const Tolerances mirror_tol{(1 + n_f) * fp32.logprobs, (1 + n_f + n_b) * fp32.grads,
                                (1 + n_f + n_b) * S * fp32.steps,
                                (1 + n_f + n_b) * S * fp32.weights, 1.0};
    // Against the unrounded float64 model: the first-order worst case, every rounding pushing
    // the same way, n u / 2 relative: n_f u / 2 for the first forward, (n_f + n_b) u / 2 for the
    // gradients. Training then multiplies differences (AdamW's normalised steps turn small
    // gradient errors into whole steps), so the steps and weights are only required to differ
    // from the float64 run by more than fp32's tolerance: bf16 measurably rounds.
    const Tolerances plain_bound{n_f * u / 2, (n_f + n_b) * u / 2, 1e300, 1e300, 0};
    const Ratios mirror = compare(ours, *ref, deck, model, mirror_tol);
    const Ratios unrounded = compare(ours, *plain, deck, model, plain_bound);
    const Ratios unrounded_fp32 = compare(ours, *plain, deck, model, fp32);
    const Ratios mirror_fp32 = compare(ours, *ref, deck, model, fp32);
    std::printf("bf16 against float64 with the same rounding points: %s\n", text(mirror).c_str());
    std::printf("  the same in fp32 tolerances: %s\n", text(mirror_fp32).c_str());
    std::printf(
        "bf16 against unrounded float64, bf16 bounds: log-probabilities %.3g, gradients "
        "%.3g\n",
        unrounded.logprobs, unrounded.grads);
    std::printf("  the same in fp32 tolerances: %s\n", text(unrounded_fp32).c_str());
    expect_within(mirror, "bf16 against float64 with p2bw's rounding points");
    EXPECT_LE(unrounded.logprobs, 1.0) << "bf16 against unrounded float64: log-probabilities";
    EXPECT_LE(unrounded.grads, 1.0) << "bf16 against unrounded float64: gradients";
    // The test can fail: without rounding (or with other rounding points) p2bw would be the
    // unrounded model within fp32's tolerance; it is not, by far, and the reference with the
    // same rounding points is much nearer than the unrounded one.
    EXPECT_GT(unrounded_fp32.logprobs, 10.0) << "bf16 is fp32's log-probabilities: no rounding";
    EXPECT_GT(unrounded_fp32.grads, 10.0) << "bf16 is fp32's gradients: no rounding";
    EXPECT_GT(unrounded_fp32.weights, 10.0) << "bf16 is fp32's weights: no rounding";
    EXPECT_LT(mirror_fp32.logprobs * 10, unrounded_fp32.logprobs)
        << "the rounding reference explains bf16's log-probabilities no better than fp32's";
    EXPECT_LT(mirror_fp32.grads * 10, unrounded_fp32.grads)
        << "the rounding reference explains bf16's gradients no better than fp32's";
  }
  fs::remove_all(dir);
}

TEST(TorchReference, Gpt) {
  compare_with_torch(config::ModelKind::gpt, config::Precision::fp32);
}
TEST(TorchReference, Bert) {
  compare_with_torch(config::ModelKind::bert, config::Precision::fp32);
}
TEST(TorchReference, GptBf16) {
  compare_with_torch(config::ModelKind::gpt, config::Precision::bf16);
}
TEST(TorchReference, BertBf16) {
  compare_with_torch(config::ModelKind::bert, config::Precision::bf16);
}

}  // namespace
}  // namespace p2bw
