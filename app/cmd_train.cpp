// `p2bw train DECK`: trains the deck's model. This version trains on one rank (d = w = 1); the
// log line every train.log_every steps gives step, loss, learning rate, gradient norm, tokens/s,
// elapsed time and the estimated time left.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>

#include "comm/deck_broadcast.hpp"
#include "command.hpp"
#include "core/error.hpp"
#include "data/token_file.hpp"
#include "pipeline/single_rank_trainer.hpp"

namespace p2bw::app {

namespace {

std::string clock_time(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

int run_train(const Context& context, const std::string& path,
              const std::vector<std::string>& overrides) {
  config::LoadOptions options;
  options.overrides = overrides;
  options.world_size = context.size;
  const config::Deck deck = comm::load_deck_collective(path, options, context.world);
  if (deck.pipeline.depth * deck.pipeline.width > 1) {
    if (context.root())
      fmt::print(stderr,
                 "error: {}: pipeline.depth = {}, pipeline.width = {}: this version trains on one "
                 "rank only "
                 "(d = w = 1); the pipeline executor is not implemented yet\n",
                 path, deck.pipeline.depth, deck.pipeline.width);
    return kExitInternal;
  }
  auto tokens = std::make_shared<data::Tokens>(data::load_tokens(deck.data.path, deck.data.format));
  pipeline::SingleRankTrainer trainer(deck, tokens);  // validates the data against the model

  std::filesystem::create_directories(deck.output.dir);
  std::ofstream(std::filesystem::path(deck.output.dir) / "deck.yaml") << config::to_yaml(deck);
  fmt::print(
      "p2bw train {}: {} {} x {} (T = {}, {} parameters), {} steps of {} sequences, schedule {}\n",
      path, to_string(deck.model.kind), deck.model.layers, deck.model.hidden, deck.model.seq_len,
      trainer.model().num_params(), deck.train.steps, config::global_batch(deck),
      to_string(deck.pipeline.schedule));
  fmt::print("outputs: {}\n", deck.output.dir);

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto window_start = start;
  std::int64_t window_tokens = 0;
  for (std::int64_t s = 0; s < deck.train.steps; ++s) {
    const pipeline::StepResult r = trainer.step();
    window_tokens += r.tokens;
    if (r.step % deck.train.log_every == 0 || r.step == deck.train.steps || r.step == 1) {
      const auto now = Clock::now();
      const double elapsed = std::chrono::duration<double>(now - start).count();
      const double window = std::chrono::duration<double>(now - window_start).count();
      const double eta =
          elapsed / static_cast<double>(r.step) * static_cast<double>(deck.train.steps - r.step);
      fmt::print(
          "step {:>6}/{} | loss {:.4f} | lr {:.3e} | grad norm {:.4f}{} | {:.0f} tok/s | elapsed "
          "{} | ETA {}\n",
          r.step, deck.train.steps, r.loss, r.lr, r.grad_norm,
          r.skipped ? " (skipped: non-finite)" : "",
          window > 0 ? static_cast<double>(window_tokens) / window : 0.0, clock_time(elapsed),
          clock_time(eta));
      std::fflush(stdout);
      window_start = now;
      window_tokens = 0;
    }
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
  CLI::App* cli =
      app.add_subcommand("train", "train a model from a deck (this version: one rank, d = w = 1)");
  cli->add_option("deck", options->deck, "YAML input deck")->required()->type_name("DECK");
  add_set_option(*cli, options->overrides);
  return {cli, [options](const Context& context) {
            return run_train(context, options->deck, options->overrides);
          }};
}

}  // namespace p2bw::app
