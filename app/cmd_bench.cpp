// `p2bw bench DECK`: times forward and backward of each part type (embedding, one block, head)
// and of the whole model on this device for the deck's microbatch size, and prints tokens/s with
// the machine and build they came from. A benchmark to compare run to run, not a test.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <thread>

#include "comm/deck_broadcast.hpp"
#include "command.hpp"
#include "core/build_info.hpp"
#include "data/loader.hpp"
#include "kernels/gemm.hpp"
#include "model/stage_model.hpp"

namespace p2bw::app {

namespace {

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

struct Timing {
  double forward = 0, backward = 0;  // median seconds per microbatch
};

// Median forward and backward time of parts [first, end) over `repeats` runs after one warm-up.
Timing time_parts(const config::Deck& deck, int first, int end, int repeats) {
  model::StageModel model(deck.model, deck.train.microbatch_size, first, end);
  model::FloatView params("params", static_cast<size_t>(model.num_params()));
  model::FloatView grads("grads", static_cast<size_t>(model.num_params()));
  model.init(params, deck.train.seed);
  model::Cache cache = model.make_cache();
  const auto n = static_cast<size_t>(model.boundary_floats());
  model::FloatView out, dout, din("din", n);
  if (!model.has_head()) {
    out = model::FloatView("out", n);
    dout = model::FloatView("dout", n);
  }
  if (!model.has_embedding()) Kokkos::deep_copy(model.input_slot(cache), 0.1f);
  if (model.has_embedding()) Kokkos::deep_copy(cache.tokens, 7);
  if (model.has_head()) Kokkos::deep_copy(cache.targets, 11);
  if (dout.data()) Kokkos::deep_copy(dout, 0.01f);
  model::Exec exec;
  std::vector<double> forward, backward;
  using Clock = std::chrono::steady_clock;
  for (int r = 0; r <= repeats; ++r) {
    const auto t0 = Clock::now();
    model.forward(exec, params, cache, out);
    exec.fence();
    const auto t1 = Clock::now();
    model.backward(exec, params, grads, cache, dout, din, 1.0);
    exec.fence();
    const auto t2 = Clock::now();
    if (r == 0) continue;  // warm-up
    forward.push_back(std::chrono::duration<double>(t1 - t0).count());
    backward.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  return {median(forward), median(backward)};
}

int run_bench(const Context& context, const std::string& path,
              const std::vector<std::string>& overrides, int repeats) {
  config::LoadOptions options;
  options.overrides = overrides;
  options.require_data = false;
  const config::Deck deck = comm::load_deck_collective(path, options, context.world);
  if (!context.root()) return 0;
  kernels::set_tf32(deck.train.tf32);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  const int L = deck.model.layers, b = deck.train.microbatch_size, T = deck.model.seq_len;
  fmt::print(
      "p2bw bench {}: {} {} x {} (heads {}, T = {}, vocab {}), microbatch {} sequences, median of "
      "{}\n",
      path, to_string(deck.model.kind), L, deck.model.hidden, deck.model.heads, T, deck.model.vocab,
      b, repeats);
  fmt::print("machine: {} ({}, {} hardware threads)\n", host, cpu_model(),
             std::thread::hardware_concurrency());
  fmt::print("build: p2bw {}, {}, GEMM: {}\n\n", p2bw_version(), kokkos_description(),
             kernels::gemm_backend_name<float, model::Exec>());
  fmt::print("{:<12} {:>14} {:>14} {:>14} {:>14}\n", "part", "forward ms", "backward ms",
             "total ms", "tokens/s");
  const double tokens = static_cast<double>(b) * T;
  auto row = [&](const char* name, const Timing& t) {
    const double total = t.forward + t.backward;
    fmt::print("{:<12} {:>14.3f} {:>14.3f} {:>14.3f} {:>14.0f}\n", name, 1e3 * t.forward,
               1e3 * t.backward, 1e3 * total, tokens / total);
  };
  row("embedding", time_parts(deck, 0, 1, repeats));
  row("block", time_parts(deck, 1, 2, repeats));
  row("head+loss", time_parts(deck, L + 1, L + 2, repeats));
  row("model", time_parts(deck, 0, L + 2, repeats));
  return 0;
}

}  // namespace

Command add_bench(CLI::App& app) {
  struct Options {
    std::string deck;
    std::vector<std::string> overrides;
    int repeats = 5;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cli = app.add_subcommand(
      "bench", "time forward and backward per part type and the whole model on this device");
  cli->add_option("deck", options->deck, "YAML input deck")->required()->type_name("DECK");
  add_set_option(*cli, options->overrides);
  cli->add_option("--repeats", options->repeats, "timed runs per measurement (median reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  return {cli, [options](const Context& context) {
            return run_bench(context, options->deck, options->overrides, options->repeats);
          }};
}

}  // namespace p2bw::app
