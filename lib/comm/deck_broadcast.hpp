// Collective deck loading: rank 0 reads and validates the deck, every rank receives the same
// resolved deck, or the same one-line error.
#pragma once

#include <mpi.h>

#include <string>

#include "config/deck_io.hpp"

namespace p2bw::comm {

// Broadcasts a string from `root` to every rank of `comm`.
void broadcast_string(std::string& text, int root, MPI_Comm comm);

// Collective over `comm`. Throws UserError with the same message on every rank when the deck is
// invalid. Checks d·w against the size of `comm` when options.world_size is 0 and check_world.
config::Deck load_deck_collective(const std::string& path, config::LoadOptions options,
                                  MPI_Comm comm);

}  // namespace p2bw::comm
