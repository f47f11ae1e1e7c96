// `p2bw train DECK`: trains the deck's model on d·w MPI ranks with the deck's schedule. Rank 0
// prints the stage map, then a line every train.log_every steps: step, loss, learning rate,
// gradient norm, tokens/s, elapsed time and the estimated time left.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>

#include "comm/deck_broadcast.hpp"
#include "comm/process_grid.hpp"
#include "command.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "data/token_file.hpp"
#include "pipeline/pipeline_trainer.hpp"

namespace p2bw::app {

namespace {

std::string clock_time(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

// Loads the data on rank 0 and checks it against the model, so that a mistake is one clean
// error on every rank; the first and the last stage then load it for themselves.
std::shared_ptr<const data::Tokens> load_data(const Context& context, const config::Deck& deck,
                                              bool needed) {
  std::shared_ptr<const data::Tokens> tokens;
  int ok = 1;
  std::string problem;
  if (context.root()) {
    try {
      auto loaded =
          std::make_shared<data::Tokens>(data::load_tokens(deck.data.path, deck.data.format));
      data::Loader check(loaded, deck);
      tokens = loaded;
    } catch (const UserError& error) {
      ok = 0;
      problem = error.what();
    }
  }
  std::string message = problem;
  comm::broadcast_string(message, 0, context.world);
  P2BW_MPI_CHECK(MPI_Bcast(&ok, 1, MPI_INT, 0, context.world));
  if (!ok) throw UserError(message);
  if (needed && !tokens)
    tokens = std::make_shared<data::Tokens>(data::load_tokens(deck.data.path, deck.data.format));
  return needed ? tokens : nullptr;
}

int run_train(const Context& context, const std::string& path,
              const std::vector<std::string>& overrides) {
  config::LoadOptions options;
  options.overrides = overrides;
  options.world_size = context.size;
  const config::Deck deck = comm::load_deck_collective(path, options, context.world);
  const comm::ProcessGrid grid(context.world, deck.pipeline.depth, deck.pipeline.width);
  const auto tokens = load_data(context, deck, grid.first_stage() || grid.last_stage());
  pipeline::PipelineTrainer trainer(deck, grid, tokens);

  if (context.root()) {
    std::filesystem::create_directories(deck.output.dir);
    std::ofstream(std::filesystem::path(deck.output.dir) / "deck.yaml") << config::to_yaml(deck);
    fmt::print(
        "p2bw train {}: {} {} x {} (T = {}), {} steps of {} sequences, schedule {}, d = {}, w = "
        "{}\n",
        path, to_string(deck.model.kind), deck.model.layers, deck.model.hidden, deck.model.seq_len,
        deck.train.steps, config::global_batch(deck), to_string(deck.pipeline.schedule),
        deck.pipeline.depth, deck.pipeline.width);
    const auto& stages = trainer.stage_map().stages;
    for (size_t s = 0; s < stages.size(); ++s)
      fmt::print("  stage {} on ranks {}..{}: {}blocks {}-{}{}\n", s, s * deck.pipeline.width,
                 (s + 1) * deck.pipeline.width - 1, stages[s].has_embedding ? "embedding + " : "",
                 stages[s].first_block, stages[s].first_block + stages[s].blocks - 1,
                 stages[s].has_head ? " + head" : "");
    fmt::print("outputs: {}\n", deck.output.dir);
    std::fflush(stdout);
  }

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto window_start = start;
  std::int64_t window_tokens = 0;
  for (std::int64_t s = 0; s < deck.train.steps; ++s) {
    const pipeline::StepResult r = trainer.step();
    window_tokens += r.tokens;
    if (!context.root() ||
        (r.step % deck.train.log_every != 0 && r.step != deck.train.steps && r.step != 1))
      continue;
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - start).count();
    const double window = std::chrono::duration<double>(now - window_start).count();
    const double eta =
        elapsed / static_cast<double>(r.step) * static_cast<double>(deck.train.steps - r.step);
    fmt::print(
        "step {:>6}/{} | loss {:.4f} | lr {:.3e} | grad norm {:.4f}{} | {:.0f} tok/s | elapsed {} "
        "| ETA {}\n",
        r.step, deck.train.steps, r.loss, r.lr, r.grad_norm,
        r.skipped ? " (skipped: non-finite)" : "",
        window > 0 ? static_cast<double>(window_tokens) / window : 0.0, clock_time(elapsed),
        clock_time(eta));
    std::fflush(stdout);
    window_start = now;
    window_tokens = 0;
  }
  return 0;
}

}  // namespace

Command add_train(CLI::App& app) {
  struct Options {
    std::string deck;
    std::vector<std::string> overrides;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cli = app.add_subcommand("train", "train a model from a deck on d·w MPI ranks");
  cli->add_option("deck", options->deck, "YAML input deck")->required()->type_name("DECK");
  add_set_option(*cli, options->overrides);
  return {cli, [options](const Context& context) {
            return run_train(context, options->deck, options->overrides);
          }};
}

}  // namespace p2bw::app
