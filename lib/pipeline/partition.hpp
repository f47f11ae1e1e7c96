// The stage map: which contiguous range of model parts each pipeline stage runs. Stage 0 holds
// the embedding, stage d-1 the final LayerNorm, LM head and loss; blocks are split explicitly
// (pipeline.partition) or balanced by forward FLOPs.
#pragma once

#include <vector>

#include "config/deck.hpp"

namespace p2bw::pipeline {

struct StageRange {
  int first_block = 0;  // global index of the stage's first transformer block
  int blocks = 0;       // number of blocks (>= 1)
  bool has_embedding = false;
  bool has_head = false;
};

struct StageMap {
  std::vector<StageRange> stages;  // d entries
  bool balanced = false;           // true when computed, false when given by pipeline.partition
};

// Blocks per stage: the deck's explicit partition, or the contiguous split that minimises the
// largest stage's forward FLOPs (embedding and head included), ties broken toward equal counts.
StageMap make_stage_map(const config::Deck& deck);

}  // namespace p2bw::pipeline
