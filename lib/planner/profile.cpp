// Measuring, computing, writing and reading planner profiles (see profile.hpp).
#include "planner/profile.hpp"

#include <fmt/format.h>
#include <Kokkos_Core.hpp>

#include <algorithm>
#include <chrono>
#include <vector>

#include "config/deck_io.hpp"
#include "core/error.hpp"
#include "io/hdf5_file.hpp"
#include "model/model_shape.hpp"
#include "model/optimizer.hpp"
#include "model/stage_model.hpp"

namespace p2bw::planner {

const MicrobatchProfile* Profile::find(int microbatch_size) const {
  for (const MicrobatchProfile& entry : entries)
    if (entry.microbatch_size == microbatch_size) return &entry;
  return nullptr;
}

std::vector<int> Profile::microbatch_sizes() const {
  std::vector<int> sizes;
  for (const MicrobatchProfile& entry : entries) sizes.push_back(entry.microbatch_size);
  return sizes;
}

namespace {

constexpr std::int64_t kFloat = 4;

// Sizes of a part from the shared accounting (ModelShape) in model.precision: the gradient the
// all-reduce sums is fp32 in every precision; the boundary tensor and the stash follow the
// precision (the embedding's input is token ids, int32).
void fill_sizes(PartProfile& part, const model::PartSize& size, config::Precision precision) {
  part.weight_bytes = kFloat * size.params;
  part.boundary_bytes = size.input_bytes(precision);
  part.stash_bytes = size.activation_bytes(precision);
}

// Deterministic inputs that vary like real ones: a constant input would make every LayerNorm
// output zero and the timing unlike a run's.
void fill_varied(model::FloatView v, float scale) {
  Kokkos::parallel_for(
      "p2bw::profile_fill", Kokkos::RangePolicy<model::Exec>(0, v.extent(0)),
      KOKKOS_LAMBDA(const int i) {
        v(i) =
            scale * static_cast<float>((i % 2001) * 7919 % 2001 - 1000) / 1000.0f;  // no overflow
      });
}

// The same in the storage type (bf16 rounded).
void fill_varied(const StoreView& v, float scale) {
  const model::FloatView values("p2bw::profile_fill", static_cast<size_t>(v.size()));
  fill_varied(values, scale);
  narrow_into(model::Exec(), v, values);
  model::Exec().fence();
}

// Varied token ids in [0, vocab), on the host (B, T).
std::vector<int> varied_tokens(std::int64_t n, int vocab) {
  std::vector<int> tokens(static_cast<size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    tokens[static_cast<size_t>(i)] = static_cast<int>((i * 7919 + 13) % vocab);
  return tokens;
}

void fill_varied(model::IntView v, int vocab) {
  const std::vector<int> tokens = varied_tokens(static_cast<std::int64_t>(v.extent(0)), vocab);
  using HostInts = Kokkos::View<const int*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>;
  Kokkos::deep_copy(v, HostInts(tokens.data(), tokens.size()));
}

std::vector<int> sorted_unique(std::vector<int> sizes) {
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

}  // namespace

Profile analytic_profile(const config::ModelConfig& model, double flops_per_device,
                         const std::vector<int>& microbatch_sizes) {
  P2BW_ASSERT(flops_per_device > 0, "analytic profile needs flops_per_device > 0");
  Profile profile;
  profile.measured = false;
  profile.model = model;
  profile.source = "analytic";
  for (int b : sorted_unique(microbatch_sizes)) {
    const model::ModelShape shape(model, b);
    MicrobatchProfile entry;
    entry.microbatch_size = b;
    auto fill = [&](PartProfile& part, const model::PartSize& size) {
      fill_sizes(part, size, model.precision);
      part.forward_s = size.flops_forward / flops_per_device;
      part.backward_s = 2 * part.forward_s;
      part.backward_recompute_s = part.forward_s + part.backward_s;
    };
    fill(entry.embedding, shape.embedding());
    fill(entry.block, shape.block());
    fill(entry.head, shape.head());
    profile.entries.push_back(entry);
  }
  return profile;
}

double median(std::vector<double> times) {
  P2BW_ASSERT(!times.empty(), "median of no timings");
  std::sort(times.begin(), times.end());
  const size_t n = times.size();
  return n % 2 == 1 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2;
}

void time_parts(const config::Deck& deck, int b, int first, int end, int repeats, PartProfile& part,
                model::KernelTimer* timer) {
  model::StageModel model(deck.model, b, first, end);
  model.set_kernel_timer(timer);
  // The fp32 master and the weights used in compute (bf16(master) under bf16, else the master).
  model::FloatView master("master", static_cast<size_t>(model.num_params()));
  model::FloatView grads("grads", static_cast<size_t>(model.num_params()));
  const StoreView params =
      model.bf16() ? model.make_stored("params", model.num_params()) : StoreView(master);
  model.init_weights(model::Exec(), params, master, deck.train.seed);
  model::Cache cache = model.make_cache();
  StoreView out = StoreView::empty_of(model.bf16()), dout = out;
  const StoreView din = model.make_boundary("din");
  if (!model.has_head()) {
    out = model.make_boundary("out");
    dout = model.make_boundary("dout");
    fill_varied(dout, 0.01f);
  }
  if (model.has_embedding()) {
    const std::vector<int> tokens = varied_tokens(cache.tokens.extent(0), deck.model.vocab);
    model.load(model::Exec(), cache, tokens.data(), nullptr);
  } else {
    fill_varied(model.input_slot(cache), 1.0f);
  }
  if (model.has_head()) fill_varied(cache.targets, deck.model.vocab);
  model::Exec exec;
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  model::Optimizer optimizer(deck.train, model.tensors(), model.num_params());
  DoubleView sums("sums", static_cast<size_t>(model.parts()));
  auto host_sums = Kokkos::create_mirror_view(sums);
  std::vector<double> forward, backward, recompute, step;
  for (int r = 0; r <= repeats; ++r) {
    model::KernelTimer* const marks = r > 0 ? timer : nullptr;  // the warm-up is not timed
    const auto t0 = Clock::now();
    if (marks != nullptr) marks->start("forward");
    model.forward(exec, params, cache, out);
    if (marks != nullptr) marks->stop();
    exec.fence();
    const auto t1 = Clock::now();
    if (marks != nullptr) marks->start("backward");
    model.backward(exec, params, grads, cache, dout, din, 1.0);
    if (marks != nullptr) marks->stop();
    exec.fence();
    const auto t2 = Clock::now();
    // Recomputation: the stage input is all that was kept; backward re-runs forward first.
    model.forward(exec, params, cache, out);
    model.backward(exec, params, grads, cache, dout, din, 1.0);
    exec.fence();
    const auto t3 = Clock::now();
    // The per-batch update as the executor runs it: norm, step into the same buffer, zeroing.
    Kokkos::deep_copy(grads, 1e-3f);
    exec.fence();
    const auto t4 = Clock::now();
    model.grad_square_sums(exec, grads, sums);
    Kokkos::deep_copy(exec, host_sums, sums);  // the update needs the norm on the host
    exec.fence();
    // bf16: the master in place and its bf16 copy beside it, as the executor's update.
    if (model.bf16())
      optimizer.step(exec, master, master, grads, 1e-4, 0.5, params);
    else
      optimizer.step(exec, master, master, grads, 1e-4, 0.5);
    Kokkos::deep_copy(exec, grads, 0.0f);
    exec.fence();
    const auto t5 = Clock::now();
    if (r == 0) continue;  // warm-up
    forward.push_back(seconds(t0, t1));
    backward.push_back(seconds(t1, t2));
    recompute.push_back(seconds(t2, t3));
    step.push_back(seconds(t4, t5));
  }
  part.forward_s = median(forward);
  part.backward_s = median(backward);
  part.backward_recompute_s = median(recompute);
  part.step_s = median(step);
}

Profile measure_profile(const config::Deck& deck, const std::vector<int>& microbatch_sizes,
                        int repeats) {
  model::set_kernel_precision(deck);
  Profile profile;
  profile.measured = true;
  profile.model = deck.model;
  profile.source = "measured";
  profile.optimizer = deck.train.optimizer.kind;
  const int L = deck.model.layers;
  for (int b : sorted_unique(microbatch_sizes)) {
    const model::ModelShape shape(deck.model, b);
    MicrobatchProfile entry;
    entry.microbatch_size = b;
    fill_sizes(entry.embedding, shape.embedding(), deck.model.precision);
    fill_sizes(entry.block, shape.block(), deck.model.precision);
    fill_sizes(entry.head, shape.head(), deck.model.precision);
    time_parts(deck, b, 0, 1, repeats, entry.embedding);
    const int chain = std::min(L, kChainBlocks);
    time_parts(deck, b, 1, 1 + chain, repeats, entry.block);
    for (double* t : {&entry.block.forward_s, &entry.block.backward_s,
                      &entry.block.backward_recompute_s, &entry.block.step_s})
      *t /= chain;
    time_parts(deck, b, L + 1, L + 2, repeats, entry.head);
    profile.entries.push_back(entry);
  }
  return profile;
}

void write_profile(const std::string& path, const Profile& profile, const config::Deck& deck) {
  io::H5File file(path, io::H5File::Mode::create);
  file.set_attribute("/", "format", std::string("p2bw-profile"));
  file.set_attribute("/", "format_version", kProfileFormatVersion);
  file.set_attribute("/", "deck", config::to_yaml(deck));
  file.set_attribute("/", "machine", profile.machine);
  file.set_attribute("/", "measured", std::int64_t{profile.measured ? 1 : 0});
  file.set_attribute("/", "ranks", std::int64_t{profile.ranks});
  file.set_attribute("/", "link_latency_us", profile.link_latency_us);
  file.set_attribute("/", "link_bandwidth_gbps", profile.link_bandwidth_gbps);
  file.set_attribute("/", "optimizer", std::string(config::to_string(profile.optimizer)));
  file.set_attribute("/", "precision", std::string(config::to_string(profile.model.precision)));
  file.set_attribute("/", "model_kind", std::string(config::to_string(profile.model.kind)));
  file.set_attribute("/", "hidden", std::int64_t{profile.model.hidden});
  file.set_attribute("/", "heads", std::int64_t{profile.model.heads});
  file.set_attribute("/", "seq_len", std::int64_t{profile.model.seq_len});
  file.set_attribute("/", "vocab", std::int64_t{profile.model.vocab});
  file.set_attribute("/", "layers", std::int64_t{profile.model.layers});
  file.set_attribute("/", "parts", std::string("embedding,block,head"));
  std::vector<std::int64_t> sizes;
  for (const MicrobatchProfile& entry : profile.entries) {
    sizes.push_back(entry.microbatch_size);
    const std::string group = fmt::format("/microbatch_{}/", entry.microbatch_size);
    const PartProfile* parts[3] = {&entry.embedding, &entry.block, &entry.head};
    std::vector<double> forward, backward, recompute, step;
    std::vector<std::int64_t> weights, boundary, stash;
    for (const PartProfile* part : parts) {
      forward.push_back(part->forward_s);
      backward.push_back(part->backward_s);
      recompute.push_back(part->backward_recompute_s);
      step.push_back(part->step_s);
      weights.push_back(part->weight_bytes);
      boundary.push_back(part->boundary_bytes);
      stash.push_back(part->stash_bytes);
    }
    const std::vector<hsize_t> shape{3};
    file.write(group + "forward_s", forward, shape);
    file.write(group + "backward_s", backward, shape);
    file.write(group + "backward_recompute_s", recompute, shape);
    file.write(group + "step_s", step, shape);
    file.write(group + "weight_bytes", weights, shape);
    file.write(group + "boundary_bytes", boundary, shape);
    file.write(group + "stash_bytes", stash, shape);
  }
  file.set_attribute("/", "microbatch_sizes", sizes);
}

Profile read_profile(const std::string& path) {
  io::H5File file(path, io::H5File::Mode::read);
  const auto bad = [&](const std::string& what) {
    return UserError(
        fmt::format("{}: {} (allowed: a profile.h5 written by p2bw profile, format "
                    "p2bw-profile version {})",
                    path, what, kProfileFormatVersion));
  };
  if (!file.has_attribute("/", "format") || file.string_attribute("/", "format") != "p2bw-profile")
    throw bad("not a p2bw profile");
  const std::int64_t version = file.int_attribute("/", "format_version");
  if (version != kProfileFormatVersion && version != 3)
    throw bad(fmt::format("format_version {} is not supported", version));
  Profile profile;
  profile.source = path;
  profile.measured = file.int_attribute("/", "measured") != 0;
  profile.machine = file.string_attribute("/", "machine");
  profile.ranks = static_cast<int>(file.int_attribute("/", "ranks"));
  profile.link_latency_us = file.double_attribute("/", "link_latency_us");
  profile.link_bandwidth_gbps = file.double_attribute("/", "link_bandwidth_gbps");
  const std::string optimizer = file.string_attribute("/", "optimizer");
  if (optimizer != "adamw" && optimizer != "sgd")
    throw bad(fmt::format("optimizer '{}' is not adamw or sgd", optimizer));
  profile.optimizer =
      optimizer == "sgd" ? config::OptimizerKind::sgd : config::OptimizerKind::adamw;
  if (version == 3) {  // a flag for TF32 GEMMs; otherwise fp32
    profile.model.precision =
        file.int_attribute("/", "tf32") != 0 ? config::Precision::tf32 : config::Precision::fp32;
  } else {
    const std::string precision = file.string_attribute("/", "precision");
    bool known = false;
    for (config::Precision p :
         {config::Precision::fp32, config::Precision::tf32, config::Precision::bf16}) {
      if (precision == config::to_string(p)) {
        profile.model.precision = p;
        known = true;
      }
    }
    if (!known) throw bad(fmt::format("precision '{}' is not fp32, tf32 or bf16", precision));
  }
  const std::string kind = file.string_attribute("/", "model_kind");
  profile.model.kind = kind == "bert" ? config::ModelKind::bert : config::ModelKind::gpt;
  profile.model.hidden = static_cast<int>(file.int_attribute("/", "hidden"));
  profile.model.heads = static_cast<int>(file.int_attribute("/", "heads"));
  profile.model.seq_len = static_cast<int>(file.int_attribute("/", "seq_len"));
  profile.model.vocab = static_cast<int>(file.int_attribute("/", "vocab"));
  profile.model.layers = static_cast<int>(file.int_attribute("/", "layers"));
  for (std::int64_t b : file.int_list_attribute("/", "microbatch_sizes")) {
    const std::string group = fmt::format("/microbatch_{}/", b);
    MicrobatchProfile entry;
    entry.microbatch_size = static_cast<int>(b);
    const auto forward = file.read<double>(group + "forward_s");
    const auto backward = file.read<double>(group + "backward_s");
    const auto recompute = file.read<double>(group + "backward_recompute_s");
    const auto step = file.read<double>(group + "step_s");
    const auto weights = file.read<std::int64_t>(group + "weight_bytes");
    const auto boundary = file.read<std::int64_t>(group + "boundary_bytes");
    const auto stash = file.read<std::int64_t>(group + "stash_bytes");
    if (forward.size() != 3 || backward.size() != 3 || recompute.size() != 3 || step.size() != 3 ||
        weights.size() != 3 || boundary.size() != 3 || stash.size() != 3)
      throw bad(group + ": expected 3 parts per dataset");
    PartProfile* parts[3] = {&entry.embedding, &entry.block, &entry.head};
    for (int i = 0; i < 3; ++i) {
      parts[i]->forward_s = forward[i];
      parts[i]->backward_s = backward[i];
      parts[i]->backward_recompute_s = recompute[i];
      parts[i]->step_s = step[i];
      parts[i]->weight_bytes = weights[i];
      parts[i]->boundary_bytes = boundary[i];
      parts[i]->stash_bytes = stash[i];
    }
    profile.entries.push_back(entry);
  }
  std::sort(profile.entries.begin(), profile.entries.end(),
            [](const MicrobatchProfile& a, const MicrobatchProfile& b) {
              return a.microbatch_size < b.microbatch_size;
            });
  if (profile.entries.empty()) throw bad("holds no microbatch size");
  return profile;
}

void check_profile_matches(const Profile& profile, const config::Deck& deck) {
  const config::ModelConfig& p = profile.model;
  const config::ModelConfig& model = deck.model;
  if (p.kind != model.kind || p.hidden != model.hidden || p.heads != model.heads ||
      p.seq_len != model.seq_len || p.vocab != model.vocab)
    throw UserError(fmt::format(
        "{}: the profile is of another model ({} hidden {} heads {} seq_len {} vocab {}; the deck "
        "has {} hidden {} heads {} seq_len {} vocab {}) (allowed: a profile of the deck's model "
        "shape; layers may differ)",
        profile.source, config::to_string(p.kind), p.hidden, p.heads, p.seq_len, p.vocab,
        config::to_string(model.kind), model.hidden, model.heads, model.seq_len, model.vocab));
  if (profile.measured && (profile.optimizer != deck.train.optimizer.kind ||
                           profile.model.precision != deck.model.precision))
    throw UserError(fmt::format(
        "{}: the profile was measured with optimizer {} and precision {}; the deck has optimizer "
        "{} and precision {} (allowed: a profile taken with the deck's train.optimizer.kind and "
        "model.precision)",
        profile.source, config::to_string(profile.optimizer),
        config::to_string(profile.model.precision), config::to_string(deck.train.optimizer.kind),
        config::to_string(deck.model.precision)));
}

}  // namespace p2bw::planner
