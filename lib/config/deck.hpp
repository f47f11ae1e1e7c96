// The input deck: plain typed structs holding every setting of a run, filled from YAML by
// deck_parse.cpp and validated there. Key names (model.hidden, pipeline.depth, ...) are fixed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "schedule/kind.hpp"

namespace p2bw::config {

using schedule::ScheduleKind;  // one enum: gpipe, flush, two_bw
using schedule::to_string;
enum class ModelKind { gpt, bert };
enum class OptimizerKind { adamw, sgd };
enum class LrDecay { cosine, linear, constant };
enum class DataFormat { text, tokens, llmc };
// pipeline.transport: auto picks NCCL when every rank has a GPU of its own (comm/transport_choice).
enum class TransportKind { automatic, nccl, mpi };
// model.precision: what activations and the weights used in compute are stored in, and what the
// GEMMs run in. fp32: everything fp32; tf32: fp32 storage, GEMMs on TF32 tensor cores (CUDA);
// bf16: activations and compute copies of the weights in bf16, fp32 master weights, optimizer
// state and gradient reduction (docs/deck.md, "Precision"; model::StageModel).
enum class Precision { fp32, tf32, bf16 };

struct ModelConfig {
  ModelKind kind = ModelKind::gpt;
  int layers = 0;   // transformer blocks
  int hidden = 0;   // C
  int heads = 0;    // NH; divides hidden
  int seq_len = 0;  // T
  int vocab = 256;  // V (padded to a multiple of 64 inside the model)
  Precision precision = Precision::fp32;
};

struct PipelineConfig {
  int depth = 1;  // d: stages
  int width = 1;  // w: data-parallel replicas of every stage
  ScheduleKind schedule = ScheduleKind::two_bw;
  int microbatches = 0;            // m per batch per pipeline; 0 in the struct = 2·d
  bool recompute = false;          // stash stage inputs only, re-run forward in backward
  std::vector<int> partition;      // blocks per stage; empty = balanced automatically
  int sync_warmup_steps = 1000;    // 2bw only: first K optimizer steps with flush semantics (a deck
                                   // without the key gets default_sync_warmup_steps)
  double weight_prediction = 1.5;  // 2bw only: gamma of the prediction (weight_versions.hpp);
                                   // 1.5 is measured (docs/convergence.md), 0 = the paper's 2bw
  double timeout_s = 300.0;        // a rank that cannot progress for this long fails the run
  TransportKind transport = TransportKind::automatic;  // activations and reductions: NCCL or MPI
};

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::adamw;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // decoupled (AdamW) or L2 (SGD); never on LayerNorm and biases
  double momentum = 0.9;      // SGD only
};

struct TrainConfig {
  int microbatch_size = 1;  // b: sequences per microbatch per rank
  std::int64_t steps = 0;   // optimizer steps
  std::uint64_t seed = 1234;
  OptimizerConfig optimizer;
  double lr = 3e-4;                    // peak learning rate
  std::int64_t lr_warmup_steps = 0;    // linear warm-up from 0 to lr
  LrDecay lr_decay = LrDecay::cosine;  // after warm-up, down to lr_min at the last step
  double lr_min = 0.0;
  double grad_clip = 1.0;  // global gradient-norm clip; 0 disables
  int log_every = 10;      // steps between log lines
  int eval_every = 0;      // steps between validation evaluations; 0 = after the last step only
  int eval_batches = 4;    // global batches of validation sequences per evaluation
};

struct DataConfig {
  std::string path;  // resolved: relative paths in a deck are relative to the deck's folder
  DataFormat format = DataFormat::text;
  double val_fraction = 0.0;  // the tail of the data held out for validation; 0 = none
};

struct OutputConfig {
  std::string dir;  // empty in the struct = runs/<deck name>
  bool trace = false;
};

struct CheckpointConfig {
  int every = 0;  // steps between checkpoints; 0 = only at the end
  int keep = 2;   // most recent checkpoints kept
};

struct Deck {
  ModelConfig model;
  PipelineConfig pipeline;
  TrainConfig train;
  DataConfig data;
  OutputConfig output;
  CheckpointConfig checkpoint;

  std::string source;  // the deck file it was read from (for messages)
  // Where each key given was set ("deck.yaml:12", "--set 'key=value'"), for the checks only a
  // launch can make (pipeline.transport needs every rank's GPU); keys left at their default are
  // absent. On the ranks that re-parse rank 0's resolved deck it names lines of that echo.
  std::map<std::string, std::string> set_at;
};

// Names used in decks and messages.
const char* to_string(ModelKind kind);
const char* to_string(OptimizerKind kind);
const char* to_string(LrDecay decay);
const char* to_string(DataFormat format);
const char* to_string(TransportKind kind);   // "auto", "nccl", "mpi"
const char* to_string(Precision precision);  // "fp32", "tf32", "bf16"

// Where `key` was set (Deck::set_at), or the deck file when it was left at its default.
std::string where_set(const Deck& deck, const std::string& key);

// Bytes of one activation value and of one value of a weight copy used in compute: 2 in bf16,
// else 4. Master weights, gradients and optimizer state are fp32 (4 bytes) in every precision.
inline int compute_bytes(Precision precision) {
  return precision == Precision::bf16 ? 2 : 4;
}

// Vocabulary padded to a multiple of 64 (rows of the embedding and the LM head).
inline int padded_vocab(int vocab) {
  return (vocab + 63) / 64 * 64;
}

// 2bw's synchronous warm-up when the deck does not set pipeline.sync_warmup_steps: flush semantics
// for the first min(1000, ⌈steps/2⌉) steps, with the default weight prediction after them.
// Measured on the demo (docs/convergence.md), final validation loss against flush: +0.36% after
// 100 of 200 flush steps with prediction 1.5 (+1.7% without), +1.2% after 50 (+3.9% without);
// 1000 flush steps matched vanilla without prediction in a 3000-step emulation.
inline int default_sync_warmup_steps(std::int64_t steps) {
  return static_cast<int>(std::min<std::int64_t>(1000, (steps + 1) / 2));
}

// Global batch in sequences: b · m · w.
inline std::int64_t global_batch(const Deck& deck) {
  return std::int64_t{deck.train.microbatch_size} * deck.pipeline.microbatches *
         deck.pipeline.width;
}

}  // namespace p2bw::config
