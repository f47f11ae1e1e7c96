// End-to-end agreement with PyTorch (tests/model/torch_reference.py, float64) for a tiny GPT and
// a tiny BERT with identical weights and tokens: log-probabilities (the logits up to each row's
// constant, which is all the loss sees), the loss, every parameter gradient of the first step,
// and the weights after 5 AdamW steps with warm-up and global-norm clipping. Tolerances scale
// with float32 epsilon and the reduction length. Skips, saying why, without a Python that has
// torch and h5py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <memory>

#include "data/loader.hpp"
#include "io/hdf5_file.hpp"
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

// max |a - b| over the tensor, against tol · max(max |b|, floor).
void expect_close(const std::vector<float>& ours, const std::vector<double>& ref, double tol,
                  double floor, const std::string& what) {
  ASSERT_EQ(ours.size(), ref.size()) << what;
  double error = 0, scale = floor;
  for (size_t i = 0; i < ref.size(); ++i) {
    error = std::max(error, std::abs(ours[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  EXPECT_LE(error, tol * scale) << what << ": max error " << error << " for max magnitude "
                                << scale;
}

void compare_with_torch(config::ModelKind kind) {
  const std::string python = python_with_torch();
  if (python.empty())
    GTEST_SKIP() << "no Python with torch and h5py (install python3-torch and python3-h5py)";
  const config::Deck deck = tiny_deck(kind);
  auto tokens = std::make_shared<data::Tokens>(data::tokenize_bytes(kText));
  const auto dir = fs::temp_directory_path() / ("p2bw_torch_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string in = (dir / "in.h5").string(), out = (dir / "out.h5").string();

  pipeline::SingleRankTrainer trainer(deck, tokens);
  model::StageModel& model = trainer.model();
  const int m = deck.pipeline.microbatches, b = deck.train.microbatch_size, T = deck.model.seq_len;
  const int V = deck.model.vocab, C = deck.model.hidden, Vp = model.shape().padded_vocab;
  const auto w0 = to_host(trainer.weights(), 0, model.num_params());

  // The reference's input: initial weights (real vocabulary rows), every microbatch, the LRs.
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
    for (const model::TensorInfo& t : model.tensors()) {
      if (t.tied_copy) continue;
      std::vector<hsize_t> shape(t.shape.begin(), t.shape.end());
      std::int64_t count = t.count;
      if (t.name == "embedding/wte") {
        shape[0] = static_cast<hsize_t>(V);
        count = std::int64_t{V} * C;
      }
      file.write<double>("/weights/" + t.name,
                         std::vector<double>(w0.begin() + t.offset, w0.begin() + t.offset + count),
                         shape);
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
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  io::H5File ref(out, io::H5File::Mode::read);

  const double eps = std::numeric_limits<float>::epsilon();
  // Forward of the first microbatch at W(0): log-probabilities and loss.
  {
    model::StageModel probe(deck.model, b, 0, deck.model.layers + 2);
    model::Cache cache = probe.make_cache();
    data::Loader loader(tokens, deck);
    auto host_tokens = Kokkos::create_mirror_view(cache.tokens);
    auto host_targets = Kokkos::create_mirror_view(cache.targets);
    loader.microbatch(0, 0, 0, host_tokens.data(), host_targets.data());
    Kokkos::deep_copy(cache.tokens, host_tokens);
    Kokkos::deep_copy(cache.targets, host_targets);
    const double loss =
        probe.forward(model::Exec(), trainer.gradient_weights(), cache, model::FloatView());
    const auto our_logits = to_host(probe.logits(), 0, std::int64_t{b} * T * Vp);
    const auto logits = ref.read<double>("/logits");
    std::vector<float> ours;
    std::vector<double> theirs;
    for (int row = 0; row < b * T; ++row) {
      double max = -1e300, sum = 0, our_max = -1e300, our_sum = 0;
      const float* l = &our_logits[static_cast<size_t>(row) * Vp];
      for (int v = 0; v < V; ++v) our_max = std::max(our_max, double(l[v]));
      for (int v = 0; v < V; ++v) our_sum += std::exp(double(l[v]) - our_max);
      for (int v = 0; v < V; ++v) max = std::max(max, logits[static_cast<size_t>(row * V + v)]);
      for (int v = 0; v < V; ++v) sum += std::exp(logits[static_cast<size_t>(row * V + v)] - max);
      for (int v = 0; v < V; ++v) {
        ours.push_back(static_cast<float>(l[v] - our_max - std::log(our_sum)));
        theirs.push_back(logits[static_cast<size_t>(row * V + v)] - max - std::log(sum));
      }
      for (int v = V; v < Vp; ++v) EXPECT_EQ(l[v], 0.0f) << "padded column (zero embedding rows)";
    }
    expect_close(ours, theirs, 8 * eps * std::sqrt(double(C)), 1.0, "log-probabilities");
    EXPECT_NEAR(loss, ref.read<double>("/loss0")[0], 8 * eps * std::sqrt(double(C)) * loss)
        << "loss of the first microbatch";
  }

  std::vector<double> losses, norms;
  for (int step = 0; step < deck.train.steps; ++step) {
    const pipeline::StepResult r = trainer.step();
    losses.push_back(r.loss);
    norms.push_back(r.grad_norm);
    if (step == 0) {
      // Gradients of step 1; the tied embedding's two copies both hold the sum.
      const auto grads = to_host(trainer.gradients(), 0, model.num_params());
      for (const model::TensorInfo& t : model.tensors()) {
        const std::string name = t.tied_copy ? "embedding/wte" : t.name;
        const auto expected = ref.read<double>("/grads/" + name);
        const std::int64_t count = static_cast<std::int64_t>(expected.size());
        std::vector<float> mine(grads.begin() + t.offset, grads.begin() + t.offset + count);
        // Reduction length: the b·T positions of a microbatch times m microbatches.
        expect_close(mine, expected, 4 * eps * std::sqrt(double(b * T * m * C)), 1e-6,
                     "gradient of " + t.name);
        for (std::int64_t i = count; i < t.count; ++i)
          ASSERT_EQ(grads[static_cast<size_t>(t.offset + i)], 0.0f) << "padded row";
      }
    }
  }
  const auto ref_losses = ref.read<double>("/losses");
  const auto ref_norms = ref.read<double>("/grad_norms");
  for (int step = 0; step < deck.train.steps; ++step) {
    EXPECT_NEAR(losses[step], ref_losses[step], 1e-4 * ref_losses[step])
        << "loss of step " << step + 1;
    EXPECT_NEAR(norms[step], ref_norms[step], 1e-4 * ref_norms[step])
        << "grad norm of step " << step + 1;
  }
  EXPECT_GT(ref_norms[0], deck.train.grad_clip) << "the test must exercise clipping";
  // Weights after 5 steps: AdamW moves each weight by at most about lr per step, so errors are
  // measured against the sum of the learning rates: 1e-4 of it, plus what float rounding of the
  // gradient does to AdamW's normalised step. Its first step is lr·g/(|g| + ε), whose derivative
  // in g is lr·ε/(|g| + ε)²: a gradient error δg (the float bound of the gradient check above)
  // moves the weight by lr·ε·δg/(|g| + ε)², which matters only where |g| is near ε, i.e. for the
  // few weights whose gradient is below the gradient's own rounding (their direction is not
  // determined by float precision). |g| is the reference's first-step gradient.
  double lr_sum = 0;
  for (int step = 0; step < deck.train.steps; ++step)
    lr_sum += model::learning_rate(deck.train, step);
  const double adam_eps = deck.train.optimizer.eps;
  const auto final_weights = to_host(trainer.weights(), 0, model.num_params());
  for (const model::TensorInfo& t : model.tensors()) {
    const std::string name = t.tied_copy ? "embedding/wte" : t.name;
    const auto expected = ref.read<double>("/final/" + name);
    std::vector<float> mine(
        final_weights.begin() + t.offset,
        final_weights.begin() + t.offset + static_cast<std::int64_t>(expected.size()));
    const auto first_grads = ref.read<double>("/grads/" + name);
    double grad_scale = 1e-6;
    for (double g : first_grads) grad_scale = std::max(grad_scale, std::abs(g));
    const double grad_error = 4 * eps * std::sqrt(double(b * T * m * C)) * grad_scale;
    double worst = 0;  // error / allowed
    size_t at = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      const double g = std::abs(first_grads[i]);
      const double allowed =
          lr_sum * (1e-4 + adam_eps * grad_error / ((g + adam_eps) * (g + adam_eps)));
      const double ratio = std::abs(mine[i] - expected[i]) / std::min(allowed, 2 * lr_sum);
      if (ratio > worst) worst = ratio, at = i;
    }
    EXPECT_LE(worst, 1.0) << "weights of " << t.name << " after " << deck.train.steps
                          << " steps: element " << at << " is " << mine[at] << ", reference "
                          << expected[at] << " (first-step gradient " << first_grads[at] << ")";
  }
  fs::remove_all(dir);
}

TEST(TorchReference, Gpt) {
  compare_with_torch(config::ModelKind::gpt);
}
TEST(TorchReference, Bert) {
  compare_with_torch(config::ModelKind::bert);
}

}  // namespace
}  // namespace p2bw
