// `p2bw bench DECK`: times forward and backward of each part type (embedding, one block, head)
// and of the whole model on this device for the deck's microbatch size, and prints tokens/s with
// the machine and build they came from; with --kernels also each kernel of those parts. A
// benchmark to compare run to run, not a test.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <thread>
#include <utility>

#include "comm/deck_broadcast.hpp"
#include "command.hpp"
#include "core/build_info.hpp"
#include "data/loader.hpp"
#include "kernels/attention.hpp"
#include "kernels/gemm.hpp"
#include "model/stage_model.hpp"
#include "planner/profile.hpp"

namespace p2bw::app {

namespace {

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

// Each kernel of the embedding, one block and the head, timed by marks (model::KernelTimer): per
// run the calls and milliseconds of each (phase, kernel) and its share of its phase.
void print_kernels(const config::Deck& deck, int b, int repeats) {
#ifdef KOKKOS_ENABLE_CUDA
  const char* clock = "CUDA events";
#else
  const char* clock = "host clock, a fence after each kernel";
#endif
  fmt::print("\nkernels ({}; per forward or backward, mean of {} runs):\n", clock, repeats);
  fmt::print("{:<10} {:<9} {:<24} {:>5} {:>10} {:>7}\n", "part", "phase", "kernel", "calls", "ms",
             "share");
  const int L = deck.model.layers;
  for (const auto& [name, first] :
       {std::pair<const char*, int>{"embedding", 0}, {"block", 1}, {"head", L + 1}}) {
    model::KernelTimer timer{model::Exec()};
    planner::PartProfile unused;
    planner::time_parts(deck, b, first, first + 1, repeats, unused, &timer);
    const std::vector<model::KernelTimer::Total> totals = timer.totals();
    for (const model::KernelTimer::Total& t : totals) {
      double phase_s = 0;
      for (const model::KernelTimer::Total& u : totals)
        if (u.phase == t.phase) phase_s += u.seconds;
      fmt::print("{:<10} {:<9} {:<24} {:>5} {:>10.3f} {:>6.1f}%\n", name, t.phase, t.kernel,
                 t.calls / repeats, 1e3 * t.seconds / repeats,
                 phase_s > 0 ? 100 * t.seconds / phase_s : 0.0);
    }
  }
}

int run_bench(const Context& context, const std::string& path,
              const std::vector<std::string>& overrides, int repeats, bool kernels) {
  config::LoadOptions options;
  options.overrides = overrides;
  options.require_data = false;
  const config::Deck deck = comm::load_deck_collective(path, options, context.world);
  if (!context.root()) return 0;
  // bench runs the whole model on this rank, one microbatch at a time.
  config::Deck alone = deck;
  alone.pipeline.depth = alone.pipeline.width = alone.pipeline.microbatches = 1;
  alone.pipeline.partition.clear();
  require_memory_for(alone, MPI_COMM_SELF, "p2bw bench");
  model::set_kernel_precision(deck);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  const int L = deck.model.layers, b = deck.train.microbatch_size, T = deck.model.seq_len;
  fmt::print(
      "p2bw bench {}: {} {} x {} (heads {}, T = {}, vocab {}), microbatch {} sequences, {}, "
      "median of {}\n",
      path, to_string(deck.model.kind), L, deck.model.hidden, deck.model.heads, T, deck.model.vocab,
      b, to_string(deck.model.precision), repeats);
  fmt::print("machine: {} ({}, {} hardware threads)\n", host, cpu_model(),
             std::thread::hardware_concurrency());
  const int C = deck.model.hidden, NH = deck.model.heads;
  const bool causal = deck.model.kind == config::ModelKind::gpt;
  const std::string attention =
      deck.model.precision == config::Precision::bf16
          ? kernels::attention_backend<float, kernels::bf16, model::Exec>(b, T, C, NH, causal)
          : kernels::attention_backend<float, float, model::Exec>(b, T, C, NH, causal);
  fmt::print("build: p2bw {}, {}, GEMM: {}, attention: {}\n\n", p2bw_version(),
             kokkos_description(), kernels::gemm_backend_name<float, model::Exec>(), attention);
  fmt::print("{:<12} {:>14} {:>14} {:>14} {:>14}\n", "part", "forward ms", "backward ms",
             "total ms", "tokens/s");
  const double tokens = static_cast<double>(b) * T;
  auto row = [&](const char* name, int first, int end) {
    planner::PartProfile t;
    planner::time_parts(deck, b, first, end, repeats, t);
    const double total = t.forward_s + t.backward_s;
    fmt::print("{:<12} {:>14.3f} {:>14.3f} {:>14.3f} {:>14.0f}\n", name, 1e3 * t.forward_s,
               1e3 * t.backward_s, 1e3 * total, tokens / total);
  };
  row("embedding", 0, 1);
  row("block", 1, 2);
  row("head+loss", L + 1, L + 2);
  row("model", 0, L + 2);
  if (kernels) print_kernels(deck, b, repeats);
  return 0;
}

}  // namespace

Command add_bench(CLI::App& app) {
  struct Options {
    std::string deck;
    std::vector<std::string> overrides;
    int repeats = 5;
    bool kernels = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cli = app.add_subcommand(
      "bench", "time forward and backward per part type and the whole model on this device");
  add_deck_options(*cli, options->deck, options->overrides);
  cli->add_option("--repeats", options->repeats, "timed runs per measurement (median reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cli->add_flag("--kernels", options->kernels,
                "also time each kernel of the embedding, one block and the head (CUDA events on "
                "a GPU, the clock after a fence on the host)");
  return {cli, [options](const Context& context) {
            return run_bench(context, options->deck, options->overrides, options->repeats,
                             options->kernels);
          }};
}

}  // namespace p2bw::app
