// `p2bw train DECK [--resume latest|PATH]`: trains the deck's model on d·w MPI ranks with the
// deck's schedule. Rank 0 prints the stage map, then a line every train.log_every steps: step,
// loss, learning rate, gradient norm, tokens/s, elapsed time and the estimated time left.
// With a validation split (data.val_fraction), the validation loss every train.eval_every steps
// and at the end, on its own line and in metrics.h5's /eval.
// Checkpoints every checkpoint.every steps and at the end; SIGTERM or SIGUSR1 (SLURM's warning
// before a time limit) makes every rank finish the current step, checkpoint and exit 0.
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "comm/deck_broadcast.hpp"
#include "comm/process_grid.hpp"
#include "comm/transport_choice.hpp"
#include "command.hpp"
#include "core/build_info.hpp"
#include "core/error.hpp"
#include "data/loader.hpp"
#include "data/token_file.hpp"
#include "io/checkpoint.hpp"
#include "io/metrics_file.hpp"
#include "io/paths.hpp"
#include "io/run_dir.hpp"
#include "model/stage_model.hpp"
#include "pipeline/memory.hpp"
#include "pipeline/memory_limit.hpp"
#include "pipeline/partition.hpp"
#include "pipeline/pipeline_trainer.hpp"
#include "schedule/text.hpp"

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

// Rank 0's metrics file: the header once, then a row per step with one row per stage.
class Metrics {
 public:
  Metrics(const Context& context, const config::Deck& deck,
          const pipeline::PipelineTrainer& trainer, const comm::TransportChoice& transport,
          bool resumed)
      : context_(context), deck_(deck) {
    if (!context.root()) return;
    io::MetricsHeader header;
    header.deck_yaml = config::to_yaml(deck);
    header.p2bw_version = p2bw_version();
    header.kokkos = kokkos_description();
    header.start_time = io::utc_timestamp();
    header.depth = deck.pipeline.depth;
    header.width = deck.pipeline.width;
    header.transport = transport.text();
    const auto& stages = trainer.stage_map().stages;
    // What the run allocates, which it measures.
    const auto predicted = pipeline::predict_memory(deck, trainer.stage_map());
    for (size_t s = 0; s < stages.size(); ++s) {
      header.stage_map += fmt::format(
          "stage {}: {}blocks {}-{}{}\n", s, stages[s].has_embedding ? "embedding + " : "",
          stages[s].first_block, stages[s].first_block + stages[s].blocks - 1,
          stages[s].has_head ? " + head" : "");
      const auto& p = predicted[s];
      header.predicted.push_back(
          {p.weights, p.gradients, p.optimizer, p.activations, p.buffers, p.workspace});
    }
    header.action_names = schedule::action_kind_names();
    writer_ = std::make_unique<io::MetricsWriter>(
        (std::filesystem::path(deck.output.dir) / "metrics.h5").string(), header,
        trainer.steps_done() + 1, resumed);
  }

  // Rank 0 appends a step's row once its stage rows (every stage's timing, which the executor
  // reduces with the next step) are known too, so rows go out in step order.
  void add(const pipeline::StepResult& r, double tokens_per_s, double time_s) {
    if (!writer_) return;
    steps_[r.step] = {r.step,      r.loss,       r.lr,
                      r.grad_norm, tokens_per_s, writer_->elapsed_before() + time_s,
                      r.skipped};
    write_ready();
  }
  void add(std::vector<std::vector<io::StageRow>> stage_rows) {
    if (!writer_) return;
    for (auto& rows : stage_rows) {
      const std::int64_t step = rows.at(0).step;
      stages_[step] = std::move(rows);
    }
    write_ready();
  }

  void add_eval(std::int64_t step, double loss) {
    if (writer_) writer_->append_eval(step, loss);
  }

  // Collective (at checkpoints and at the end): gathers every rank's trace to rank 0.
  void write_trace(pipeline::PipelineTrainer& trainer) {
    if (!deck_.output.trace) return;
    std::vector<double> events;
    for (const auto& e : trainer.take_trace())
      events.insert(events.end(),
                    {double(e.kind), double(e.microbatch), double(e.version), e.start, e.end});
    std::vector<int> counts(static_cast<size_t>(context_.size)), offsets(counts.size());
    const int count = static_cast<int>(events.size());
    P2BW_MPI_CHECK(MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, context_.world));
    int total = 0;
    for (size_t i = 0; i < counts.size(); ++i) offsets[i] = total, total += counts[i];
    std::vector<double> gathered(context_.root() ? static_cast<size_t>(total) : 0);
    P2BW_MPI_CHECK(MPI_Gatherv(events.data(), count, MPI_DOUBLE, gathered.data(), counts.data(),
                               offsets.data(), MPI_DOUBLE, 0, context_.world));
    if (!context_.root()) return;
    for (int rank = 0; rank < context_.size; ++rank) {
      std::vector<io::TraceEvent> trace;
      for (int i = offsets[rank]; i + 4 < offsets[rank] + counts[rank]; i += 5)
        trace.push_back(
            {static_cast<std::int32_t>(gathered[i]), static_cast<std::int32_t>(gathered[i + 1]),
             static_cast<std::int32_t>(gathered[i + 2]), gathered[i + 3], gathered[i + 4]});
      writer_->append_trace(rank, trace);
    }
  }

 private:
  void write_ready() {
    while (!steps_.empty() && !stages_.empty() && steps_.begin()->first == stages_.begin()->first) {
      writer_->append(steps_.begin()->second, stages_.begin()->second);
      steps_.erase(steps_.begin());
      stages_.erase(stages_.begin());
    }
  }

  const Context& context_;
  const config::Deck& deck_;
  std::unique_ptr<io::MetricsWriter> writer_;
  std::map<std::int64_t, io::StepRow> steps_;                 // waiting for their stage rows
  std::map<std::int64_t, std::vector<io::StageRow>> stages_;  // waiting for their step row
};

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
  collectively(context, [&] {
    if (!context.root()) return;
    auto loaded =
        std::make_shared<data::Tokens>(data::load_tokens(deck.data.path, deck.data.format));
    const data::DataSplits splits = data::split_data(loaded, deck);
    data::Loader check(splits.train, deck);
    if (splits.validation) data::Loader(splits.validation, deck, data::Order::sequential);
    tokens = loaded;
  });
  if (needed && !tokens)
    tokens = std::make_shared<data::Tokens>(data::load_tokens(deck.data.path, deck.data.format));
  return needed ? tokens : nullptr;
}

// What the user asked to do with output.dir.
struct RunRequest {
  bool resume = false;  // --resume given (possibly empty, which is refused)
  std::string resume_from;
  bool start_over = false;
};

int run_train(const Context& context, const std::string& path,
              const std::vector<std::string>& overrides, const RunRequest& request) {
  if (request.resume && request.start_over)
    throw UserError(
        "--resume and --start-over: one continues the run in output.dir, the other deletes it "
        "(allowed: one of them)");
  if (request.resume && request.resume_from.empty())
    throw UserError(
        "--resume: empty (allowed: latest, or a checkpoints/step_<N> folder; --start-over to "
        "train again from step 1)");
  config::LoadOptions options;
  options.overrides = overrides;
  options.world_size = context.size;
  const config::Deck deck = comm::load_deck_collective(path, options, context.world);
  const comm::ProcessGrid grid(context.world, deck.pipeline.depth, deck.pipeline.width);
  // Every rank's GPU decides the transport; nccl asked for but impossible is the user's error.
  const comm::RankGpus gpus = comm::gather_rank_gpus(context.world);
  comm::TransportChoice transport;
  collectively(context, [&] {
    transport = comm::choose_transport(deck.pipeline.transport, gpus, comm::build_has_nccl(),
                                       config::where_set(deck, "pipeline.transport"));
  });
  const std::string& resume_from = request.resume_from;
  const std::string checkpoints = (std::filesystem::path(deck.output.dir) / "checkpoints").string();
  std::unique_ptr<io::CheckpointReader> checkpoint;
  // Everything is checked before anything is written or allocated: the checkpoint, the memory
  // the ranks can have, the data and the ownership of output.dir.
  collectively(context, [&] {
    if (!request.resume) return;
    checkpoint = std::make_unique<io::CheckpointReader>(
        io::resolve_checkpoint(checkpoints, resume_from), deck);
    if (checkpoint->state().step >= deck.train.steps)
      throw UserError(
          fmt::format("--resume {}: the checkpoint is at step {}, the run has train.steps = {} "
                      "(allowed: more steps)",
                      resume_from, checkpoint->state().step, deck.train.steps));
  });
  {
    const auto predicted = pipeline::predict_memory(deck, pipeline::make_stage_map(deck));
    const pipeline::MemoryAvailable available = pipeline::available_memory(context.world);
    collectively(context, [&] {
      const std::string why =
          pipeline::memory_refusal(predicted[static_cast<size_t>(grid.stage())].total(), available,
                                   fmt::format("stage {} (rank {})", grid.stage(), context.rank));
      if (!why.empty() && !pipeline::memory_check_ignored()) throw UserError(why);
    });
  }
  const auto tokens = load_data(context, deck, grid.first_stage() || grid.last_stage());
  std::unique_ptr<io::RunDir> run_dir;
  collectively(context, [&] {
    if (!context.root()) return;
    run_dir = std::make_unique<io::RunDir>(deck.output.dir,
                                           request.resume       ? io::RunMode::resume
                                           : request.start_over ? io::RunMode::start_over
                                                                : io::RunMode::fresh,
                                           checkpoint ? checkpoint->state().run_id : "");
  });
  std::unique_ptr<pipeline::PipelineTrainer> trainer_owner;
  collectively(context, [&] {
    trainer_owner = std::make_unique<pipeline::PipelineTrainer>(
        deck, grid, tokens, checkpoint.get(), transport.backend);
  });
  pipeline::PipelineTrainer& trainer = *trainer_owner;
  if (deck.output.trace) trainer.enable_trace();
  std::signal(SIGTERM, request_stop);
  std::signal(SIGUSR1, request_stop);

  collectively(context, [&] {
    if (!context.root()) return;
    if (request.start_over)
      fmt::print("--start-over: removing {}/{{{}}}\n", deck.output.dir,
                 fmt::join(io::run_files(), ","));
    run_dir->commit();
    io::write_text_file((std::filesystem::path(deck.output.dir) / "deck.yaml").string(),
                        config::to_yaml(deck), "output.dir");
  });
  if (context.root()) {
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
    fmt::print("  transport: {}\n", transport.text());
    if (deck.model.precision == config::Precision::bf16)
      fmt::print(
          "  precision: bf16 storage (activations, their gradients, stage-boundary messages and "
          "the compute weights in bf16; fp32 master, gradients and optimizer state)\n");
    fmt::print("outputs: {} (run {})\n", deck.output.dir, run_dir->run_id());
    if (checkpoint)
      fmt::print("resumed after step {} from {}\n", checkpoint->state().step,
                 io::resolve_checkpoint(checkpoints, resume_from));
    std::fflush(stdout);
  }
  Metrics metrics(context, deck, trainer, transport, checkpoint != nullptr);
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
  std::map<std::int64_t, std::pair<double, double>> step_times;  // step -> tokens/s, time
  // Results arrive in step order, the same on every rank, under 2bw one step after their batch
  // ran (the update is deferred): log and record them; true when some rank asked to stop.
  auto take = [&](const std::vector<pipeline::StepResult>& results) {
    bool stop = false;
    for (const pipeline::StepResult& r : results) {
      stop = stop || r.stop;
      const auto times = step_times.at(r.step);
      step_times.erase(r.step);
      metrics.add(r, times.first, times.second);
      window_tokens += r.tokens;
      if (!context.root() || (r.step % deck.train.log_every != 0 && r.step != deck.train.steps &&
                              r.step != first_step + 1))
        continue;
      const auto now = Clock::now();
      const double elapsed = std::chrono::duration<double>(now - start).count();
      const double window = std::chrono::duration<double>(now - window_start).count();
      const double eta = elapsed / static_cast<double>(r.step - first_step) *
                         static_cast<double>(deck.train.steps - r.step);
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
    metrics.add(trainer.take_stage_rows());
    return stop;
  };
  // Collective, after synchronize(): the validation loss of the weights after the steps done.
  auto evaluate = [&] {
    const auto eval_start = Clock::now();
    const double loss = trainer.evaluate();
    metrics.add_eval(trainer.steps_done(), loss);
    if (!context.root()) return;
    fmt::print("step {:>6}/{} | val loss {:.4f} | {} validation sequences in {:.2f} s\n",
               trainer.steps_done(), deck.train.steps, loss, data::eval_sequences(deck),
               std::chrono::duration<double>(Clock::now() - eval_start).count());
    std::fflush(stdout);
  };
  auto synchronize_and_save = [&](const char* why) {
    take(trainer.synchronize());
    metrics.write_trace(trainer);
    save(why);
  };
  while (trainer.steps_done() < deck.train.steps) {
    const auto step_start = Clock::now();
    const auto results = trainer.step(stop_requested != 0);
    const auto step_end = Clock::now();
    step_times[trainer.steps_done()] = {
        static_cast<double>(config::global_batch(deck) * deck.model.seq_len) /
            std::chrono::duration<double>(step_end - step_start).count(),
        std::chrono::duration<double>(step_end - start).count()};
    const bool stop = take(results);
    if (stop && trainer.steps_done() < deck.train.steps) {
      synchronize_and_save("stop signal");
      return 0;
    }
    const bool eval_now = trainer.has_validation() && deck.train.eval_every > 0 &&
                          trainer.steps_done() % deck.train.eval_every == 0 &&
                          trainer.steps_done() < deck.train.steps;
    if (eval_now) {
      take(trainer.synchronize());
      evaluate();
    }
    if (deck.checkpoint.every > 0 && trainer.steps_done() % deck.checkpoint.every == 0 &&
        trainer.steps_done() < deck.train.steps)
      synchronize_and_save("periodic");
  }
  take(trainer.synchronize());
  if (trainer.has_validation()) evaluate();
  synchronize_and_save("end of the run");
  return 0;
}

}  // namespace

Command add_train(CLI::App& app) {
  struct Options {
    std::string deck;
    std::vector<std::string> overrides;
    RunRequest request;
    CLI::Option* resume = nullptr;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cli = app.add_subcommand("train", "train a model from a deck on d·w MPI ranks");
  add_deck_options(*cli, options->deck, options->overrides);
  options->resume =
      cli->add_option(
             "--resume", options->request.resume_from,
             "continue from a checkpoint: latest (of output.dir) or a checkpoints/step_<N> "
             "folder; any layout")
          ->type_name("latest|PATH");
  cli->add_flag("--start-over", options->request.start_over,
                "output.dir holds a run: delete its run_id, deck.yaml, metrics.h5 and checkpoints/ "
                "(nothing else) and train from step 1; refused while that run is live");
  return {cli, [options](const Context& context) {
            options->request.resume = options->resume->count() > 0;
            return run_train(context, options->deck, options->overrides, options->request);
          }};
}

}  // namespace p2bw::app
