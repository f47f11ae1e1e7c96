// `p2bw simulate DECK`: generates the deck's schedule, proves it with the checker, replays it with
// per-action costs and prints the per-stage table, the bubble fraction and a text Gantt chart of
// the first batches; the timeline goes to HDF5 for plots.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>

#include "comm/deck_broadcast.hpp"
#include "command.hpp"
#include "core/error.hpp"
#include "io/paths.hpp"
#include "io/simulation_file.hpp"
#include "schedule/check.hpp"
#include "schedule/simulate.hpp"
#include "schedule/text.hpp"

namespace p2bw::app {

namespace {

struct Options {
  std::string deck;
  std::vector<std::string> overrides;
  double forward = 1.0, backward = 2.0, message = 0.0, allreduce = 0.0, step = 0.0;
  bool global_sync = false;
  int batches = 4;
  int columns = 100;
  std::string output;        // HDF5 timeline; default <output.dir>/simulation.h5
  std::string schedule_out;  // optional text form of the schedule
};

// "p/q" when x is a fraction with a small denominator, for exact bubble fractions.
std::string as_fraction(double x) {
  for (int q = 1; q <= 1000; ++q) {
    const double p = std::round(x * q);
    if (std::abs(p / q - x) < 1e-9)
      return p == 0 ? "" : fmt::format("{}/{}", static_cast<long long>(p), q);
  }
  return "";
}

int run_simulate(const Context& context, const Options& options) {
  config::LoadOptions load;
  load.overrides = options.overrides;
  load.require_data = false;  // simulating needs no data
  const config::Deck deck = comm::load_deck_collective(options.deck, load, context.world);
  if (!context.root()) return 0;
  if (options.batches < 1)
    throw UserError(
        fmt::format("--batches {}: needs at least one batch (allowed: >= 1)", options.batches));
  // The schedule and its timeline hold every action of every batch: a bound keeps a typo in
  // --batches from exhausting memory (std::bad_alloc) instead of being a one-line error.
  constexpr std::int64_t kMaxActions = 8'000'000;
  const std::int64_t actions =
      std::int64_t{4} * options.batches * deck.pipeline.microbatches * deck.pipeline.depth;
  if (actions > kMaxActions)
    throw UserError(fmt::format(
        "--batches {}: {} batches of m = {} microbatches on d = {} stages are about {} actions to "
        "simulate (allowed: batches · m · d <= {})",
        options.batches, options.batches, deck.pipeline.microbatches, deck.pipeline.depth, actions,
        kMaxActions / 4));
  const schedule::ScheduleKind kind = deck.pipeline.schedule;
  const int warmup = kind == schedule::ScheduleKind::two_bw
                         ? std::min(deck.pipeline.sync_warmup_steps, options.batches)
                         : 0;
  const schedule::Schedule sched = schedule::generate(
      kind, deck.pipeline.depth, deck.pipeline.microbatches, options.batches, warmup);
  const schedule::CheckResult proof = schedule::check(sched);
  if (!proof.ok()) P2BW_INTERNAL_ERROR("generated schedule fails the checker: " + proof.summary());
  if (!options.schedule_out.empty())
    io::write_text_file(options.schedule_out, schedule::to_text(sched), "--write-schedule");
  const std::string output =
      options.output.empty() ? (std::filesystem::path(deck.output.dir) / "simulation.h5").string()
                             : options.output;
  io::prepare_output_file(output, options.output.empty() ? "output.dir" : "--output");
  schedule::Costs costs = schedule::Costs::uniform(
      options.forward, options.backward, options.message, options.allreduce, options.step);
  costs.global_sync = options.global_sync;
  const schedule::Report report = schedule::simulate(sched, costs);

  fmt::print("p2bw simulate {}: schedule {}, d = {}, m = {}, {} batches{}; checker: ok\n",
             options.deck, config::to_string(deck.pipeline.schedule), deck.pipeline.depth,
             deck.pipeline.microbatches, options.batches,
             warmup > 0 ? fmt::format(" (first {} with flush semantics)", warmup) : "");
  fmt::print(
      "costs per microbatch: forward {}, backward {}, message {}, all-reduce {}{}, step {}\n\n",
      options.forward, options.backward, options.message, options.allreduce,
      options.global_sync ? " (synchronising all stages)" : "", options.step);
  fmt::print("{}\n", schedule::format_report(report));
  // Bubble of one batch: flush and gpipe pay it every batch; 2bw only in the first and last.
  double bubble = 0, steady = 0;
  for (const auto& stage : report.stages) {
    bubble = std::max(bubble, stage.bubble);
    steady = std::max(steady, stage.steady_bubble);
  }
  const std::string fraction = as_fraction(bubble), steady_fraction = as_fraction(steady);
  fmt::print("bubble fraction: {:.4f}{} over the run; steady state {:.4f}{}\n", bubble,
             fraction.empty() ? "" : " (" + fraction + ")", steady,
             steady_fraction.empty() ? "" : " (" + steady_fraction + ")");
  fmt::print("\n{}", schedule::render_gantt(report.timeline, options.columns,
                                            std::min(2, options.batches)));
  io::write_simulation(output, sched, report, deck);
  fmt::print("\ntimeline: {}\n", output);
  return 0;
}

}  // namespace

Command add_simulate(CLI::App& app) {
  auto options = std::make_shared<Options>();
  CLI::App* cli = app.add_subcommand(
      "simulate", "replay a deck's schedule with per-action costs; report bubbles");
  add_deck_options(*cli, options->deck, options->overrides);
  cli->add_option("--cost-forward", options->forward, "forward time of one microbatch on a stage")
      ->check(finite_number())
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cli->add_option("--cost-backward", options->backward,
                  "backward time of one microbatch on a stage")
      ->check(finite_number())
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cli->add_option("--cost-message", options->message, "time of one activation or gradient message")
      ->check(finite_number())
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cli->add_option("--cost-allreduce", options->allreduce, "data-parallel all-reduce time per batch")
      ->check(finite_number())
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cli->add_option("--cost-step", options->step, "optimizer step time per batch")
      ->check(finite_number())
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cli->add_flag("--global-sync", options->global_sync,
                "each batch's all-reduce synchronises all stages, as p2bw train runs it");
  cli->add_option("--batches", options->batches, "batches (optimizer steps) to simulate")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));  // generating and replaying grows faster than linearly
  cli->add_option("--columns", options->columns, "width of the Gantt chart")
      ->capture_default_str()
      ->check(CLI::Range(20, 1000));
  cli->add_option("-o,--output", options->output,
                  "HDF5 timeline (default <output.dir>/simulation.h5)");
  cli->add_option("--write-schedule", options->schedule_out,
                  "also write the schedule's text form to this file");
  return {cli, [options](const Context& context) { return run_simulate(context, *options); }};
}

}  // namespace p2bw::app
