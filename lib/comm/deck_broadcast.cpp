// Rank 0 parses the deck; the resolved YAML (or the error) is broadcast and re-parsed elsewhere.
#include "comm/deck_broadcast.hpp"

#include "core/error.hpp"

namespace p2bw::comm {

void broadcast_string(std::string& text, int root, MPI_Comm comm) {
  long long size = static_cast<long long>(text.size());
  P2BW_MPI_CHECK(MPI_Bcast(&size, 1, MPI_LONG_LONG, root, comm));
  text.resize(static_cast<size_t>(size));
  if (size > 0)
    P2BW_MPI_CHECK(MPI_Bcast(text.data(), static_cast<int>(size), MPI_CHAR, root, comm));
}

config::Deck load_deck_collective(const std::string& path, config::LoadOptions options,
                                  MPI_Comm comm) {
  int rank = 0;
  P2BW_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  int ok = 1;
  std::string payload;  // the resolved deck, or the error message
  config::Deck deck;
  if (rank == 0) {
    try {
      deck = config::load_deck(path, options);
      payload = config::to_yaml(deck);
    } catch (const UserError& error) {
      ok = 0;
      payload = error.what();
    }
  }
  P2BW_MPI_CHECK(MPI_Bcast(&ok, 1, MPI_INT, 0, comm));
  broadcast_string(payload, 0, comm);
  if (!ok) throw UserError(payload);
  if (rank != 0) {
    config::LoadOptions resolved;  // already validated on rank 0: nothing to override or check
    resolved.require_data = false;
    deck = config::parse_deck(payload, path, ".", resolved);
  }
  return deck;
}

}  // namespace p2bw::comm
