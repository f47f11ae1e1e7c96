// `p2bw train DECK [--resume latest|PATH]`: trains the deck's model on d·w MPI ranks with the
// deck's schedule. Rank 0 prints the stage map, then a line every train.log_every steps: step,
// loss, learning rate, gradient norm, tokens/s, elapsed time and the estimated time left.
// Checkpoints every checkpoint.every steps and at the end; SIGTERM or SIGUSR1 (SLURM's warning
// before a time limit) makes every rank finish the current step, checkpoint and exit 0.
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>

#include "comm/deck_broadcast.hpp"
#include "comm/process_grid.hpp"
#include "command.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "data/token_file.hpp"
#include "io/checkpoint.hpp"
#include "pipeline/pipeline_trainer.hpp"

namespace p2bw::app {

namespace {

volatile std::sig_atomic_t stop_requested = 0;
extern "C" void request_stop(int) {
  stop_requested = 1;
}

// Runs `body` on every rank; a UserError on any rank becomes the same UserError on all of them
// (the message of the lowest failing rank), so no rank goes on alone.
template <class Body>
void collectively(const Context& context, Body&& body) {
  std::string message;
  try {
    body();
  } catch (const UserError& error) {
    message = error.what();
  }
  int failing = message.empty() ? context.size : context.rank, first = 0;
  P2BW_MPI_CHECK(MPI_Allreduce(&failing, &first, 1, MPI_INT, MPI_MIN, context.world));
  if (first == context.size) return;
  comm::broadcast_string(message, first, context.world);
  throw UserError(message);
}

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
              const std::vector<std::string>& overrides, const std::string& resume_from) {
  config::LoadOptions options;
  options.overrides = overrides;
  options.world_size = context.size;
  const config::Deck deck = comm::load_deck_collective(path, options, context.world);
  const comm::ProcessGrid grid(context.world, deck.pipeline.depth, deck.pipeline.width);
  const auto tokens = load_data(context, deck, grid.first_stage() || grid.last_stage());
  const std::string checkpoints = (std::filesystem::path(deck.output.dir) / "checkpoints").string();
  std::unique_ptr<io::CheckpointReader> checkpoint;
  std::unique_ptr<pipeline::PipelineTrainer> trainer_owner;
  collectively(context, [&] {
    if (!resume_from.empty()) {
      checkpoint = std::make_unique<io::CheckpointReader>(
          io::resolve_checkpoint(checkpoints, resume_from), deck);
      if (checkpoint->state().step >= deck.train.steps)
        throw UserError(
            fmt::format("--resume {}: the checkpoint is at step {}, the run has train.steps = {} "
                        "(allowed: more steps)",
                        resume_from, checkpoint->state().step, deck.train.steps));
    }
    trainer_owner =
        std::make_unique<pipeline::PipelineTrainer>(deck, grid, tokens, checkpoint.get());
  });
  pipeline::PipelineTrainer& trainer = *trainer_owner;
  std::signal(SIGTERM, request_stop);
  std::signal(SIGUSR1, request_stop);

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
    if (checkpoint)
      fmt::print("resumed after step {} from {}\n", checkpoint->state().step,
                 io::resolve_checkpoint(checkpoints, resume_from));
    std::fflush(stdout);
  }
  auto save = [&](const char* why) {
    const std::string folder = trainer.save_checkpoint(checkpoints, deck.checkpoint.keep);
    if (context.root())
      fmt::print("checkpoint after step {} ({}): {}\n", trainer.steps_done(), why, folder);
    std::fflush(stdout);
  };

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto window_start = start;
  std::int64_t window_tokens = 0;
  const std::int64_t first_step = trainer.steps_done();
  while (trainer.steps_done() < deck.train.steps) {
    const pipeline::StepResult r = trainer.step();
    window_tokens += r.tokens;
    int stop = stop_requested, any_stop = 0;
    P2BW_MPI_CHECK(MPI_Allreduce(&stop, &any_stop, 1, MPI_INT, MPI_MAX, context.world));
    if (any_stop && trainer.steps_done() < deck.train.steps) {
      save("stop signal");
      return 0;
    }
    if (deck.checkpoint.every > 0 && r.step % deck.checkpoint.every == 0 &&
        r.step < deck.train.steps)
      save("periodic");
    if (!context.root() || (r.step % deck.train.log_every != 0 && r.step != deck.train.steps &&
                            r.step != first_step + 1))
      continue;
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - start).count();
    const double window = std::chrono::duration<double>(now - window_start).count();
    const double eta = elapsed / static_cast<double>(r.step - first_step) *
                       static_cast<double>(deck.train.steps - r.step);
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
  save("end of the run");
  return 0;
}

}  // namespace

Command add_train(CLI::App& app) {
  struct Options {
    std::string deck;
    std::vector<std::string> overrides;
    std::string resume;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cli = app.add_subcommand("train", "train a model from a deck on d·w MPI ranks");
  cli->add_option("deck", options->deck, "YAML input deck")->required()->type_name("DECK");
  add_set_option(*cli, options->overrides);
  cli->add_option("--resume", options->resume,
                  "continue from a checkpoint: latest (of output.dir) or a checkpoints/step_<N> "
                  "folder; any layout")
      ->type_name("latest|PATH");
  return {cli, [options](const Context& context) {
            return run_train(context, options->deck, options->overrides, options->resume);
          }};
}

}  // namespace p2bw::app
