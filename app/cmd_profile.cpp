// `p2bw profile DECK [--microbatch-sizes 1,2,4] [-o profile.h5]`: times forward and backward (with
// and without recomputation) of the embedding, one block and the head on this device for each
// microbatch size, and writes them with the parts' byte sizes to profile.h5 for `p2bw plan`.
// Every rank measures at the same time (a full node loads its memory bus as a run does); rank 0
// writes the slowest rank's times.
#include <fmt/format.h>

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <utility>
#include <vector>

#include "comm/deck_broadcast.hpp"
#include "comm/transport.hpp"
#include "command.hpp"
#include "config/deck_io.hpp"
#include "core/build_info.hpp"
#include "core/error.hpp"
#include "io/paths.hpp"
#include "model/stage_model.hpp"
#include "planner/profile.hpp"

namespace p2bw::app {

namespace {

struct ProfileOptions {
  std::string deck;
  std::vector<std::string> overrides;
  std::vector<int> microbatch_sizes{1, 2, 4};
  int repeats = 5;
  std::string output;  // default <output.dir>/profile.h5
};

// Every time of the profile replaced by its maximum over the ranks of `comm` (collective).
void take_slowest(planner::Profile& profile, MPI_Comm comm) {
  std::vector<double*> times;
  for (planner::MicrobatchProfile& entry : profile.entries)
    for (planner::PartProfile* part : {&entry.embedding, &entry.block, &entry.head})
      for (double* t :
           {&part->forward_s, &part->backward_s, &part->backward_recompute_s, &part->step_s})
        times.push_back(t);
  std::vector<double> values;
  for (const double* t : times) values.push_back(*t);
  P2BW_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()),
                               MPI_DOUBLE, MPI_MAX, comm));
  for (size_t i = 0; i < times.size(); ++i) *times[i] = values[i];
  P2BW_MPI_CHECK(MPI_Comm_size(comm, &profile.ranks));
}

// Median one-way time of `floats` floats between ranks 0 and 1 over `repeats` round trips, sent
// as the executor's transport sends (non-blocking, polled); other ranks only take part in the
// barriers. Collective.
double one_way_s(const Context& context, int floats, int repeats) {
  std::vector<float> buffer(static_cast<size_t>(floats), 1.0f);
  std::vector<double> trips;
  const int rank = context.rank;
  const auto wait = [](MPI_Request& request) {
    comm::wait_with_deadline(request, 60.0, 0, "the link measurement");
  };
  for (int r = 0; r <= repeats; ++r) {
    P2BW_MPI_CHECK(MPI_Barrier(context.world));
    const auto start = std::chrono::steady_clock::now();
    MPI_Request request;
    if (rank == 0) {
      P2BW_MPI_CHECK(MPI_Isend(buffer.data(), floats, MPI_FLOAT, 1, 7, context.world, &request));
      wait(request);
      P2BW_MPI_CHECK(MPI_Irecv(buffer.data(), floats, MPI_FLOAT, 1, 7, context.world, &request));
      wait(request);
    } else if (rank == 1) {
      P2BW_MPI_CHECK(MPI_Irecv(buffer.data(), floats, MPI_FLOAT, 0, 7, context.world, &request));
      wait(request);
      P2BW_MPI_CHECK(MPI_Isend(buffer.data(), floats, MPI_FLOAT, 0, 7, context.world, &request));
      wait(request);
    }
    const double trip =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r > 0) trips.push_back(trip);  // the first round trip sets up the connection
  }
  return planner::median(std::move(trips)) / 2;
}

// Latency (a 4-byte message) and bandwidth (a 16 MiB message, net of the latency) between ranks
// 0 and 1, into the profile (rank 0's numbers; every rank calls it).
void measure_link(const Context& context, planner::Profile& profile) {
  if (context.size < 2) return;
  const double latency = one_way_s(context, 1, 200);
  constexpr int kLarge = 4 << 20;  // floats: 16 MiB
  const double large = one_way_s(context, kLarge, 10);
  profile.link_latency_us = 1e6 * latency;
  profile.link_bandwidth_gbps = 4.0 * kLarge / std::max(large - latency, 1e-9) / 1e9;
}

int run_profile(const Context& context, const ProfileOptions& options) {
  config::LoadOptions load;
  load.overrides = options.overrides;
  load.require_data = false;  // profiling runs on synthetic tokens
  const config::Deck deck = comm::load_deck_collective(options.deck, load, context.world);
  for (int b : options.microbatch_sizes) {  // the same check on every rank: all throw or none
    if (b < 1)
      throw UserError(
          fmt::format("--microbatch-sizes: {} is out of range (allowed: integers >= 1)", b));
    // The deck's own limits (32-bit token counts, 64-bit sizes) hold for every size measured.
    config::Deck sized = deck;
    sized.train.microbatch_size = b;
    try {
      config::parse_deck(config::to_yaml(sized), "the deck", ".", load);
    } catch (const UserError& error) {
      throw UserError(fmt::format("--microbatch-sizes {}: {}", b, error.what()));
    }
  }
  const std::string output = options.output.empty()
                                 ? (std::filesystem::path(deck.output.dir) / "profile.h5").string()
                                 : options.output;
  // Every rank checks where rank 0 will write, before minutes of measuring: all refuse or none.
  io::prepare_output_file(output, options.output.empty() ? "output.dir" : "--output");
  {
    // Each rank measures the embedding, one block and the head at the largest microbatch size.
    config::Deck parts = deck;
    parts.model.layers = parts.pipeline.depth = parts.pipeline.width = 1;
    parts.pipeline.microbatches = 1;
    parts.pipeline.partition.clear();
    for (int b : options.microbatch_sizes)
      parts.train.microbatch_size = std::max(parts.train.microbatch_size, b);
    std::string refusal;
    try {
      require_memory_for(parts, context.world, "p2bw profile");
    } catch (const UserError& error) {
      refusal = error.what();
    }
    int failed = !refusal.empty(), any = 0;
    P2BW_MPI_CHECK(MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, context.world));
    if (any)
      throw UserError(!refusal.empty()
                          ? refusal
                          : "p2bw profile: another rank of the launch lacks the memory "
                            "(allowed: fewer ranks per node, smaller "
                            "--microbatch-sizes; P2BW_IGNORE_MEMORY_CHECK=1 runs "
                            "anyway)");
  }
  planner::Profile profile =
      planner::measure_profile(deck, options.microbatch_sizes, options.repeats);
  take_slowest(profile, context.world);
  measure_link(context, profile);
  if (!context.root()) return 0;
  profile.machine = build_description();
  planner::write_profile(output, profile, deck);

  fmt::print(
      "p2bw profile {}: {} hidden {} heads {} T = {}, median of {} runs, slowest of {} ranks\n",
      options.deck, config::to_string(deck.model.kind), deck.model.hidden, deck.model.heads,
      deck.model.seq_len, options.repeats, profile.ranks);
  fmt::print("{:>4} {:<10} {:>11} {:>11} {:>14} {:>9} {:>12} {:>12} {:>12}\n", "b", "part",
             "forward ms", "backward ms", "bwd+refwd ms", "step ms", "weights B", "boundary B",
             "stash B");
  for (const planner::MicrobatchProfile& entry : profile.entries) {
    const std::pair<const char*, const planner::PartProfile*> parts[] = {
        {"embedding", &entry.embedding}, {"block", &entry.block}, {"head", &entry.head}};
    for (const auto& [name, part] : parts)
      fmt::print("{:>4} {:<10} {:>11.3f} {:>11.3f} {:>14.3f} {:>9.3f} {:>12} {:>12} {:>12}\n",
                 entry.microbatch_size, name, 1e3 * part->forward_s, 1e3 * part->backward_s,
                 1e3 * part->backward_recompute_s, 1e3 * part->step_s, part->weight_bytes,
                 part->boundary_bytes, part->stash_bytes);
  }
  if (profile.link_bandwidth_gbps > 0)
    fmt::print(
        "link rank 0 <-> rank 1 (MPI between host buffers): latency {:.1f} us, bandwidth {:.2f} "
        "GB/s (the cluster file's intra_node_* keys when the two ranks share a node)\n",
        profile.link_latency_us, profile.link_bandwidth_gbps);
  fmt::print("profile: {}\n", output);
  return 0;
}

}  // namespace

Command add_profile(CLI::App& app) {
  auto options = std::make_shared<ProfileOptions>();
  CLI::App* cli = app.add_subcommand(
      "profile", "measure per-part compute time and memory on this device (for p2bw plan)");
  add_deck_options(*cli, options->deck, options->overrides);
  cli->add_option("--microbatch-sizes", options->microbatch_sizes,
                  "microbatch sizes to measure, comma separated")
      ->delimiter(',')
      ->capture_default_str();
  cli->add_option("--repeats", options->repeats, "timed runs per measurement (median kept)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cli->add_option("-o,--output", options->output, "profile file (default <output.dir>/profile.h5)");
  return {cli, [options](const Context& context) { return run_profile(context, *options); }};
}

}  // namespace p2bw::app
