// The frame of the p2bw executable: every subcommand registers its options on a CLI11 sub-app
// and returns the function that runs it.
#pragma once

#include <mpi.h>
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace p2bw::app {

// What a subcommand's run function may use.
struct Context {
  MPI_Comm world = MPI_COMM_WORLD;
  int rank = 0;
  int size = 1;
  bool root() const { return rank == 0; }
};

// A registered subcommand: its CLI11 sub-app and the function that runs it once parsed.
struct Command {
  CLI::App* cli = nullptr;
  std::function<int(const Context&)> run;
};

// A check for number options: CLI11's PositiveNumber and Range let NaN through (every comparison
// with NaN is false); this one refuses NaN and infinities.
inline CLI::Validator finite_number() {
  return CLI::Validator(
      [](std::string& text) {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0' || !std::isfinite(value))
          return "'" + text + "' is not a finite number";
        return std::string();
      },
      "FINITE");
}

}  // namespace p2bw::app
namespace p2bw::config {
struct Deck;
}
namespace p2bw::app {

// The memory check before allocating (pipeline/memory_limit.hpp) for a deck all of whose stages
// run on this rank's share of the memory; `comm` is the ranks that measure together. Refuses with
// a UserError naming `who` unless P2BW_IGNORE_MEMORY_CHECK=1. Collective over `comm`.
void require_memory_for(const config::Deck& deck, MPI_Comm comm, const std::string& who);

// Each registers one subcommand on `app`.
Command add_check(CLI::App& app);
Command add_prepare_data(CLI::App& app);
Command add_train(CLI::App& app);
Command add_simulate(CLI::App& app);
Command add_bench(CLI::App& app);
Command add_inspect(CLI::App& app);
Command add_plan(CLI::App& app);
Command add_profile(CLI::App& app);
Command add_generate(CLI::App& app);

// The repeatable --set key.path=value option shared by the commands that read a deck.
void add_set_option(CLI::App& command, std::vector<std::string>& overrides);
// The required DECK positional and --set, for the commands that run on a deck.
void add_deck_options(CLI::App& command, std::string& deck, std::vector<std::string>& overrides);

}  // namespace p2bw::app
