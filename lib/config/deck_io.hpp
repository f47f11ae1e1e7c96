// Reading, validating and writing input decks (YAML). Every mistake becomes a one-line UserError
// "FILE:LINE: KEY: what is wrong (allowed: ...)"; --set overrides go through the same checks.
#pragma once

#include <string>
#include <vector>

#include "config/deck.hpp"

namespace p2bw::config {

struct LoadOptions {
  std::vector<std::string> overrides;  // "key.path=value", applied after the file, in order
  int world_size = 0;                  // MPI ranks the run has; 0 = do not check d·w against it
  bool require_data = true;            // data.path must name an existing file
  // The deck was written by p2bw, maybe an earlier version (a checkpoint's echo): keys that were
  // replaced since are translated (train.tf32: true -> model.precision: tf32), not refused.
  bool earlier_keys = false;
};

// Reads the deck file, applies the overrides, fills defaults and validates. Throws UserError.
Deck load_deck(const std::string& path, const LoadOptions& options = {});

// The same from YAML text; `source` names it in messages, relative data paths resolve against
// `base_dir` (the deck's folder; overrides resolve against the working directory).
Deck parse_deck(const std::string& yaml_text, const std::string& source,
                const std::string& base_dir, const LoadOptions& options = {});

// The resolved deck as YAML, every key present, in reference order. parse_deck of this text gives
// back the same deck.
std::string to_yaml(const Deck& deck);

// One entry per deck key, for `p2bw check --keys` and the deck reference in docs/.
struct KeyInfo {
  std::string path;
  std::string type;      // integer, number, boolean, string, one of ..., list of integers
  std::string allowed;   // human-readable range or choices
  std::string fallback;  // default value, or "required"
  std::string help;
};
std::vector<KeyInfo> deck_keys();

}  // namespace p2bw::config
