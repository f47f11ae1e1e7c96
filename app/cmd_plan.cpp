// `p2bw plan DECK --cluster CLUSTER.yaml [--profile profile.h5]`: searches depth, width, schedule,
// recomputation, microbatch size and count for the deck's model on a cluster with the planner's
// cost model, prints the best configurations (table or JSON) and the rejections by reason, and
// writes the best one as a ready deck and SLURM jobscript. --evaluate predicts the deck's own
// configuration instead. Runs on rank 0 only and needs no MPI communication.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>

#include "comm/deck_broadcast.hpp"
#include "command.hpp"
#include "config/deck_io.hpp"
#include "core/error.hpp"
#include "io/paths.hpp"
#include "planner/cluster.hpp"
#include "planner/cost_model.hpp"
#include "planner/profile.hpp"
#include "planner/search.hpp"

namespace p2bw::app {

namespace {

struct PlanOptions {
  std::string deck;
  std::vector<std::string> overrides;
  std::string cluster;
  std::string profile;  // empty: analytic
  std::int64_t global_batch_max = 0;
  int nodes = 0;  // 0: the cluster file's
  std::string format = "table";
  int top = 10;
  double memory_headroom = 0.9;
  std::string write_deck;
  std::string write_jobscript;
  bool evaluate = false;
};

constexpr int kAnalyticLargestMicrobatch = 64;

nlohmann::json to_json(const planner::Prediction& p) {
  const planner::Candidate& c = p.candidate;
  nlohmann::json row;
  row["w"] = c.width;
  row["d"] = c.depth;
  row["b"] = c.microbatch_size;
  row["m"] = c.microbatches;
  row["schedule"] = config::to_string(c.schedule);
  row["recompute"] = c.recompute;
  row["global_batch"] = c.global_batch();
  row["samples_per_s"] = p.samples_per_s;
  row["tokens_per_s"] = p.tokens_per_s;
  row["batch_time_s"] = p.batch_time_s;
  row["allreduce_time_s"] = p.allreduce_time_s;
  row["step_time_s"] = p.step_time_s;
  row["peak_memory_bytes"] = p.peak_memory_bytes;
  row["memory_limit_bytes"] = p.memory_limit_bytes;
  row["fits"] = p.fits();
  if (!p.fits()) row["rejection"] = planner::describe(p.rejection);
  return row;
}

void print_row_header() {
  fmt::print("{:>4} {:>5} {:>4} {:>4} {:>5} {:<6} {:<9} {:>8} {:>12} {:>14} {:>11} {:>11}  {}\n",
             "rank", "w", "d", "b", "m", "sched", "recompute", "B", "samples/s", "tokens/s",
             "batch ms", "allred ms", "peak memory per stage, GB");
}

void print_row(int rank, const planner::Prediction& p) {
  const planner::Candidate& c = p.candidate;
  std::string stages;
  for (std::int64_t bytes : p.peak_memory_bytes)
    stages += fmt::format("{}{:.4g}", stages.empty() ? "" : " ", bytes / 1e9);
  fmt::print(
      "{:>4} {:>5} {:>4} {:>4} {:>5} {:<6} {:<9} {:>8} {:>12.2f} {:>14.0f} {:>11.3f} {:>11.3f}  "
      "{}\n",
      rank, c.width, c.depth, c.microbatch_size, c.microbatches, config::to_string(c.schedule),
      c.recompute ? "yes" : "no", c.global_batch(), p.samples_per_s, p.tokens_per_s,
      1e3 * p.batch_time_s, 1e3 * p.allreduce_time_s, stages);
}

int run_plan(const Context& context, const PlanOptions& options) {
  config::LoadOptions load;
  load.overrides = options.overrides;
  load.require_data = false;  // planning reads no data
  const config::Deck deck = comm::load_deck_collective(options.deck, load, context.world);
  if (!context.root()) return 0;
  planner::Cluster cluster = planner::load_cluster(options.cluster);
  if (options.nodes > 0) {
    cluster.nodes = options.nodes;
    planner::check_devices(cluster, "--nodes");
  }
  if (options.format != "table" && options.format != "json")
    throw UserError(
        fmt::format("--format {}: not a choice (allowed: table | json)", options.format));
  if (!options.write_jobscript.empty() && options.write_deck.empty())
    throw UserError("--write-jobscript: needs --write-deck for the deck it runs (allowed: both)");
  if (options.evaluate && !options.write_deck.empty())
    throw UserError(
        "--write-deck: writes the search's best configuration; --evaluate predicts the deck as it "
        "is (allowed: one of them)");
  const config::Precision precision = deck.model.precision;
  const double flops = cluster.flops_for(precision);
  if (options.profile.empty() && !(flops > 0))
    throw UserError(fmt::format(
        "{}: flops_per_device.{}: is required without --profile for model.precision: {} (allowed: "
        "a number > 0 in the cluster file, or --profile profile.h5 from p2bw profile)",
        options.cluster, config::to_string(precision), config::to_string(precision)));

  planner::Profile profile;
  if (options.profile.empty()) {
    std::vector<int> sizes;
    for (int b = 1; b <= kAnalyticLargestMicrobatch; b *= 2) sizes.push_back(b);
    if (options.evaluate && deck.train.microbatch_size > 0)
      sizes.push_back(deck.train.microbatch_size);
    profile = planner::analytic_profile(deck.model, flops, sizes);
  } else {
    profile = planner::read_profile(options.profile);
    planner::check_profile_matches(profile, deck);
  }
  const bool json = options.format == "json";
  const std::string mode = profile.measured ? "measured profile " + options.profile
                                            : fmt::format("analytic ({:.3g} FLOP/s per device, {})",
                                                          flops, config::to_string(precision));

  if (options.evaluate) {
    planner::EvaluateOptions evaluate_options;
    evaluate_options.memory_headroom = options.memory_headroom;
    evaluate_options.time_rejected = true;
    const planner::Prediction p = planner::evaluate(deck, cluster, profile, evaluate_options);
    if (p.rejection == planner::Rejection::microbatch_not_profiled)
      throw UserError(fmt::format(
          "{}: train.microbatch_size = {} is not in the profile (allowed: {})", options.profile,
          deck.train.microbatch_size, fmt::join(profile.microbatch_sizes(), ", ")));
    if (json) {
      fmt::print("{}\n", nlohmann::json::array({to_json(p)}).dump(2));
      return 0;
    }
    fmt::print("p2bw plan --evaluate {} on {} ({} x {} devices, {:.3g} GB each), {}\n",
               options.deck, cluster.name, cluster.nodes, cluster.devices_per_node,
               cluster.memory_per_device_gb, mode);
    print_row_header();
    print_row(0, p);
    fmt::print("per stage peak memory (bytes):");
    for (std::int64_t bytes : p.peak_memory_bytes) fmt::print(" {}", bytes);
    fmt::print(
        "\ntime per batch {:.6f} s (simulated; slowest stage's all-reduce {:.6f} s, step {:.6f} "
        "s); {}\n",
        p.batch_time_s, p.allreduce_time_s, p.step_time_s,
        p.fits() ? "fits" : std::string("rejected: ") + planner::describe(p.rejection));
    return 0;
  }

  planner::SearchOptions search_options;
  search_options.global_batch_max = options.global_batch_max;
  search_options.memory_headroom = options.memory_headroom;
  const planner::SearchResult result = planner::search(deck, cluster, profile, search_options);
  const int shown = std::min<int>(options.top, static_cast<int>(result.fitting.size()));
  if (json) {
    nlohmann::json list = nlohmann::json::array();
    for (int i = 0; i < shown; ++i) list.push_back(to_json(result.fitting[i]));
    fmt::print("{}\n", list.dump(2));
  } else {
    fmt::print(
        "p2bw plan {} on {} ({} nodes x {} devices, {:.3g} GB each, {:.0f}% usable), {}\n"
        "global batch <= {}; {} configurations, {} simulations, {:.2f} s\n\n",
        options.deck, cluster.name, cluster.nodes, cluster.devices_per_node,
        cluster.memory_per_device_gb, 100 * options.memory_headroom, mode, result.global_batch_max,
        result.candidates, result.simulations, result.seconds);
    print_row_header();
    for (int i = 0; i < shown; ++i) print_row(i + 1, result.fitting[i]);
  }
  if (!json || !result.fitting.empty()) {
    // The rejection counts: after the table, or as status lines on stderr with JSON (not before
    // the one-line error when nothing fits).
    std::FILE* out = json ? stderr : stdout;
    std::int64_t rejected = 0;
    for (const auto& [reason, count] : result.rejections) rejected += count;
    fmt::print(out, "{}{} fit, {} rejected:\n", json ? "" : "\n", result.fitting.size(), rejected);
    for (const auto& [reason, count] : result.rejections)
      fmt::print(out, "  {:>10}  {}\n", count, planner::describe(reason));
  }
  if (result.fitting.empty()) {
    throw UserError(fmt::format(
        "{}: no configuration fits the cluster (allowed: more memory or devices, a larger "
        "--global-batch-max, or a smaller model)",
        options.cluster));
  }
  const planner::Candidate& best = result.fitting.front().candidate;
  // Status lines go to stderr with JSON so stdout stays one JSON document.
  std::FILE* status = json ? stderr : stdout;
  if (!options.write_deck.empty()) {
    io::write_text_file(options.write_deck, planner::plan_deck_yaml(deck, best), "--write-deck");
    fmt::print(status, "deck: {}\n", options.write_deck);
  }
  if (!options.write_jobscript.empty()) {
    const std::string name = std::filesystem::path(options.write_deck).stem().string();
    io::write_text_file(
        options.write_jobscript,
        planner::jobscript(cluster, best, std::filesystem::absolute(options.write_deck),
                           deck.output.dir, name),
        "--write-jobscript");
    fmt::print(status, "jobscript: {}\n", options.write_jobscript);
  }
  return 0;
}

}  // namespace

Command add_plan(CLI::App& app) {
  auto options = std::make_shared<PlanOptions>();
  CLI::App* cli =
      app.add_subcommand("plan", "choose depth, width, microbatch size and count for a cluster");
  add_deck_options(*cli, options->deck, options->overrides);
  cli->add_option("--cluster", options->cluster, "cluster file (YAML)")
      ->required()
      ->type_name("CLUSTER.yaml");
  cli->add_option("--profile", options->profile,
                  "profile.h5 from p2bw profile (default: analytic, from flops_per_device)");
  cli->add_option("--global-batch-max", options->global_batch_max,
                  "largest global batch b*m*w in sequences (default: the deck's own)")
      ->check(CLI::PositiveNumber);
  cli->add_option("--nodes", options->nodes, "nodes to plan for (default: the cluster file's)")
      ->check(CLI::PositiveNumber);
  cli->add_option("--format", options->format, "output: table or json")
      ->capture_default_str()
      ->check(CLI::IsMember({"table", "json"}));
  cli->add_option("--top", options->top, "fitting configurations shown")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cli->add_option("--memory-headroom", options->memory_headroom,
                  "usable fraction of each device's memory")
      ->capture_default_str()
      ->check(finite_number())
      ->check(CLI::Range(0.05, 1.0));
  cli->add_option("--write-deck", options->write_deck, "write the best configuration as a deck");
  cli->add_option("--write-jobscript", options->write_jobscript,
                  "write a SLURM jobscript that trains the written deck");
  cli->add_flag("--evaluate", options->evaluate,
                "predict the deck's own configuration instead of searching");
  return {cli, [options](const Context& context) { return run_plan(context, *options); }};
}

}  // namespace p2bw::app
