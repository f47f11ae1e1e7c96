// Collective deck loading at 1, 2 and 4 ranks: every rank gets the same resolved deck, or the
// same one-line error.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "comm/deck_broadcast.hpp"
#include "core/error.hpp"
#include "mpi_world.hpp"

namespace p2bw::comm {
namespace {

using p2bw::testing::world_rank;
using p2bw::testing::world_size;

// A deck written by rank 0 into a folder every rank can read.
std::string write_deck(const std::string& name, const std::string& pipeline) {
  const auto dir = std::filesystem::temp_directory_path() / "p2bw_mpi_deck_test";
  const auto path = dir / name;
  if (world_rank() == 0) {
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "corpus.txt") << "text\n";
    std::ofstream(path) << "model: {layers: 4, hidden: 32, heads: 4, seq_len: 16}\n"
                        << "pipeline: " << pipeline << "\n"
                        << "train: {steps: 3}\ndata: {path: corpus.txt}\n";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return path.string();
}

std::string gather_to_root_and_compare(const std::string& text) {
  // Every rank's text must equal rank 0's.
  long long size = static_cast<long long>(text.size());
  std::string root_text = text;
  MPI_Bcast(&size, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
  root_text.resize(static_cast<size_t>(size));
  MPI_Bcast(root_text.data(), static_cast<int>(size), MPI_CHAR, 0, MPI_COMM_WORLD);
  return root_text;
}

TEST(DeckBroadcast, EveryRankGetsTheSameResolvedDeck) {
  const int n = world_size();
  const std::string path =
      write_deck("good.yaml", "{depth: " + std::to_string(n) + ", schedule: flush}");
  config::LoadOptions options;
  options.world_size = n;
  options.overrides = {"train.seed=99"};
  const config::Deck deck = load_deck_collective(path, options, MPI_COMM_WORLD);
  EXPECT_EQ(deck.pipeline.depth, n);
  EXPECT_EQ(deck.train.seed, 99u);
  const std::string mine = config::to_yaml(deck);
  EXPECT_EQ(mine, gather_to_root_and_compare(mine));
}

TEST(DeckBroadcast, EveryRankGetsTheSameError) {
  const std::string path = write_deck("bad.yaml", "{depth: 1, width: 1, schedule: flush}");
  config::LoadOptions options;
  options.world_size = world_size() + 1;  // never matches d·w = 1
  std::string message;
  try {
    load_deck_collective(path, options, MPI_COMM_WORLD);
  } catch (const UserError& error) {
    message = error.what();
  }
  EXPECT_NE(message.find("bad.yaml:2: pipeline.depth: d·w = 1·1 = 1 ranks"), std::string::npos)
      << message;
  EXPECT_EQ(message, gather_to_root_and_compare(message));
}

}  // namespace
}  // namespace p2bw::comm
