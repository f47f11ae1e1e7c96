// `p2bw check DECK`: validates a deck and prints the resolved deck, the semantics of each training
// phase, the stage map, parameters per stage and the predicted memory per stage.
#include <fmt/format.h>

#include <cstdio>
#include <memory>

#include "comm/deck_broadcast.hpp"
#include "comm/transport.hpp"
#include "comm/transport_choice.hpp"
#include "command.hpp"
#include "config/deck_io.hpp"
#include "core/bytes_text.hpp"
#include "core/error.hpp"
#include "pipeline/memory.hpp"
#include "pipeline/memory_limit.hpp"
#include "pipeline/partition.hpp"

namespace p2bw::app {

namespace {

std::string bytes(std::int64_t n) {
  return bytes_text(static_cast<double>(n));
}

std::string semantics(const config::Deck& deck) {
  constexpr const char* vanilla = "W(t+1) = W(t) - lr·∇f(W(t))";
  constexpr const char* delayed = "W(t+1) = W(t) - lr·∇f(W(t-1))";
  const auto& pipe = deck.pipeline;
  if (pipe.schedule != config::ScheduleKind::two_bw)
    return fmt::format("{}: every step {} (vanilla minibatch semantics)\n",
                       to_string(pipe.schedule), vanilla);
  const std::int64_t warm = std::min<std::int64_t>(pipe.sync_warmup_steps, deck.train.steps);
  std::string text;
  if (warm > 0)
    text += fmt::format("steps 1..{}: flush (synchronous warm-up), {}\n", warm, vanilla);
  if (warm < deck.train.steps)
    text +=
        fmt::format("steps {}..{}: 2bw, {} (one-step delay; the first two 2bw batches use W({}))\n",
                    warm + 1, deck.train.steps, delayed, warm);
  if (warm < deck.train.steps && pipe.weight_prediction > 0)
    text += fmt::format(
        "  with weight prediction: from step {}, the gradient is taken at W(t-1) + {:g}·(W(t-1) - "
        "W(t-2)) instead of W(t-1)\n",
        warm + 3, pipe.weight_prediction);
  return text;
}

std::string parts(const pipeline::StageRange& range) {
  std::string text = range.has_embedding ? "embedding + " : "";
  text += range.blocks == 1 ? fmt::format("block {}", range.first_block)
                            : fmt::format("blocks {}-{}", range.first_block,
                                          range.first_block + range.blocks - 1);
  if (range.has_head) text += " + final LayerNorm, LM head (tied), loss";
  return text;
}

int run_check(const Context& context, const std::string& path,
              const std::vector<std::string>& overrides) {
  config::LoadOptions options;
  options.overrides = overrides;
  // A deck is checked on its own (one rank) or inside the launch it is meant for (d·w ranks).
  options.world_size = context.size > 1 ? context.size : 0;
  const config::Deck deck = comm::load_deck_collective(path, options, context.world);
  const int ranks = deck.pipeline.depth * deck.pipeline.width;
  // Inside its launch the check measures what each rank really has; alone, it assumes all d·w
  // ranks share this host (as jobscripts/local-run runs them).
  const pipeline::MemoryAvailable available = context.size > 1
                                                  ? pipeline::available_memory(context.world)
                                                  : pipeline::available_memory_for(ranks);
  // Inside its launch every rank reports its GPU; alone, this rank stands for all only when
  // the deck has one rank (or the GPUs do not matter: no NCCL, or mpi asked for).
  const comm::RankGpus gpus = comm::gather_rank_gpus(context.world);
  if (!context.root()) return 0;
  const bool decided_here = context.size > 1 || ranks == 1 || !comm::build_has_nccl() ||
                            deck.pipeline.transport == config::TransportKind::mpi;
  const std::string transport =
      decided_here
          ? comm::choose_transport(deck.pipeline.transport, gpus, comm::build_has_nccl(),
                                   config::where_set(deck, "pipeline.transport"))
                .text()
          : fmt::format(
                "{}: decided by the launch (nccl when each of the {} ranks has its own GPU)",
                to_string(deck.pipeline.transport), ranks);

  const auto map = pipeline::make_stage_map(deck);
  const auto memory = pipeline::predict_memory(deck, map);
  fmt::print("# resolved deck: {}\n{}\n", path, config::to_yaml(deck));
  fmt::print("# semantics\n{}\n", semantics(deck));
  fmt::print("# launch: {} MPI ranks (d = {}, w = {}): mpiexec -n {} p2bw train {}\n", ranks,
             deck.pipeline.depth, deck.pipeline.width, ranks, path);
  fmt::print("#   stage s runs on ranks [s·w, (s+1)·w); global batch = b·m·w = {} sequences\n\n",
             config::global_batch(deck));
  fmt::print("# stage map ({})\n",
             map.balanced ? "balanced by forward FLOPs" : "from pipeline.partition");
  fmt::print("{:>5}  {:>6}  {:>14}  {}\n", "stage", "blocks", "parameters", "parts");
  for (size_t s = 0; s < map.stages.size(); ++s)
    fmt::print("{:>5}  {:>6}  {:>14}  {}\n", s, map.stages[s].blocks, memory[s].params,
               parts(map.stages[s]));
  fmt::print("transport: {}\n", transport);
  fmt::print("messages: {} on the wire ({} bytes per value)\n",
             deck.model.precision == config::Precision::bf16 ? "bf16" : "fp32",
             config::compute_bytes(deck.model.precision));
  fmt::print("\n# predicted memory per rank of each stage ({}, b = {}, m = {}{}, {})\n",
             to_string(deck.pipeline.schedule), deck.train.microbatch_size,
             deck.pipeline.microbatches, deck.pipeline.recompute ? ", recompute" : "",
             to_string(deck.model.precision));
  if (deck.model.precision == config::Precision::bf16)
    fmt::print(
        "#   bf16: weights = 2 bf16 compute copies + one fp32 master; activations, boundary "
        "buffers and stored workspace bf16; gradients, optimizer state and statistics fp32\n");
  constexpr auto kRow =
      "{:>5}  {:>8}  {:>9}  {:>11}  {:>11}  {:>11}  {:>11}  {:>11}  {:>11}  {:>11}\n";
  fmt::print(kRow, "stage", "versions", "in flight", "weights", "gradients", "optimizer",
             "activations", "buffers", "workspace", "total");
  for (size_t s = 0; s < memory.size(); ++s) {
    const auto& m = memory[s];
    fmt::print(kRow, s, m.versions, m.in_flight, bytes(m.weights), bytes(m.gradients),
               bytes(m.optimizer), bytes(m.activations), bytes(m.buffers), bytes(m.workspace),
               bytes(m.total()));
  }
  // The check is of what p2bw train allocates: the prediction above.
  const auto& allocated = memory;
  size_t largest = 0;
  for (size_t s = 0; s < allocated.size(); ++s)
    if (allocated[s].total() > allocated[largest].total()) largest = s;
  const std::string refusal = pipeline::memory_refusal(allocated[largest].total(), available,
                                                       fmt::format("stage {}", largest));
  fmt::print("\n# memory check ({}, {} rank(s) sharing {} on this {}): ", available.source,
             available.ranks_sharing, bytes(available.node_bytes),
             context.size > 1 ? "launch" : "host");
  if (refusal.empty()) {
    fmt::print("fits: the largest stage, {}, needs {} of {} per rank\n", largest,
               bytes(allocated[largest].total()), bytes(available.bytes));
    return 0;
  }
  fmt::print("does not fit: p2bw train, bench and profile refuse it\n");
  // Inside the launch this is the verdict of p2bw train: the same refusal, exit code 2.
  if (context.size > 1 && !pipeline::memory_check_ignored()) throw UserError(refusal);
  fmt::print("  {}\n", refusal);
  return 0;
}

}  // namespace

void require_memory_for(const config::Deck& deck, MPI_Comm comm, const std::string& who) {
  const auto memory = pipeline::predict_memory(deck, pipeline::make_stage_map(deck));
  std::int64_t peak = 0;
  for (const auto& stage : memory) peak = std::max(peak, stage.total());
  const pipeline::MemoryAvailable available = pipeline::available_memory(comm);
  const std::string refusal = pipeline::memory_refusal(peak, available, who);
  if (!refusal.empty() && !pipeline::memory_check_ignored()) throw UserError(refusal);
}

void add_set_option(CLI::App& command, std::vector<std::string>& overrides) {
  command
      .add_option("--set", overrides,
                  "override a deck key, e.g. --set pipeline.depth=4 (repeatable)")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
}

void add_deck_options(CLI::App& command, std::string& deck, std::vector<std::string>& overrides) {
  command.add_option("deck", deck, "YAML input deck")->required()->type_name("DECK");
  add_set_option(command, overrides);
}

Command add_check(CLI::App& app) {
  struct Options {
    std::string deck;
    std::vector<std::string> overrides;
    bool keys = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cli = app.add_subcommand(
      "check", "validate a deck; print the resolved deck, stage map and predicted memory");
  cli->add_option("deck", options->deck, "YAML input deck")->type_name("DECK");
  add_set_option(*cli, options->overrides);
  cli->add_flag("--keys", options->keys,
                "print the reference of all deck keys (Markdown) and exit");
  return {cli, [options](const Context& context) {
            if (options->keys) {
              if (!context.root()) return 0;
              fmt::print("| key | type | allowed | default | meaning |\n|---|---|---|---|---|\n");
              const auto cell = [](std::string text) {  // a '|' inside a Markdown cell
                for (size_t at = text.find('|'); at != std::string::npos;
                     at = text.find('|', at + 2))
                  text.replace(at, 1, "\\|");
                return text;
              };
              for (const auto& key : config::deck_keys())
                fmt::print("| `{}` | {} | {} | {} | {} |\n", key.path, key.type, cell(key.allowed),
                           cell(key.fallback), cell(key.help));
              return 0;
            }
            if (options->deck.empty())
              throw UserError("p2bw check: DECK is required (allowed: a YAML deck file)");
            return run_check(context, options->deck, options->overrides);
          }};
}

}  // namespace p2bw::app
