// `p2bw generate RUN|CHECKPOINT`: continues a prompt with a GPT from a checkpoint written under
// any layout (d, w), on one rank. A byte-level model (vocab 256) prints text, any other its token
// ids (and so does --print-ids). Temperature 0 is greedy; otherwise tokens are drawn among the
// top-k, deterministically for a seed (model/generation.hpp).
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>

#include "command.hpp"
#include "core/error.hpp"
#include "data/token_file.hpp"
#include "io/checkpoint.hpp"
#include "kernels/gemm.hpp"
#include "model/generation.hpp"
#include "pipeline/stage_checkpoint.hpp"

namespace p2bw::app {

namespace {

namespace fs = std::filesystem;

constexpr const char* kSources =
    "a run folder with checkpoints/latest, a checkpoints/step_<N> folder or its manifest.h5";

struct GenerateOptions {
  std::string source;
  std::string prompt;
  std::vector<std::int64_t> prompt_tokens;
  int tokens = 200;
  double temperature = 1.0;
  int top_k = 0;
  std::uint64_t seed = 0;
  bool print_ids = false;
};

// The checkpoint folder `source` names: a checkpoint folder (holding manifest.h5), its
// manifest.h5, or a run folder (output.dir of p2bw train), whose newest checkpoint is taken.
std::string checkpoint_folder(const std::string& source) {
  const fs::path path(source);
  std::error_code error;
  if (fs::is_regular_file(path, error)) {
    if (path.filename() == "manifest.h5")
      return path.has_parent_path() ? path.parent_path().string() : ".";
    throw UserError(
        fmt::format("p2bw generate {}: a file, not a checkpoint (allowed: {})", source, kSources));
  }
  if (!fs::is_directory(path, error))
    throw UserError(fmt::format("p2bw generate {}: no such run or checkpoint folder (allowed: {})",
                                source, kSources));
  if (fs::exists(path / "manifest.h5", error)) return source;
  if (!fs::is_directory(path / "checkpoints", error))
    throw UserError(
        fmt::format("p2bw generate {}: neither a checkpoint (no manifest.h5) nor a run folder with "
                    "checkpoints/ (allowed: {})",
                    source, kSources));
  return io::resolve_checkpoint((path / "checkpoints").string(), "latest",
                                "p2bw generate " + source,
                                "p2bw generate " + (path / "checkpoints").string() + "/step_<N>");
}

// The prompt as tokens of a vocabulary of `vocab` ids; bytes of --prompt for a byte-level model.
std::vector<std::int32_t> prompt_ids(const GenerateOptions& options, std::int64_t vocab) {
  std::vector<std::int32_t> ids;
  if (!options.prompt_tokens.empty()) {
    if (!options.prompt.empty())
      throw UserError("--prompt and --prompt-tokens: both give the prompt (allowed: one of them)");
    for (std::int64_t id : options.prompt_tokens) {
      if (id < 0 || id >= vocab)
        throw UserError(
            fmt::format("--prompt-tokens: {} is not a token of the model (allowed: ids 0 .. {})",
                        id, vocab - 1));
      ids.push_back(static_cast<std::int32_t>(id));
    }
    return ids;
  }
  if (!options.prompt.empty() && vocab != 256)
    throw UserError(fmt::format(
        "--prompt: the model's vocabulary has {} tokens, not the 256 bytes of text (allowed: "
        "--prompt-tokens ID,ID,... for this model)",
        vocab));
  for (unsigned char byte : options.prompt) ids.push_back(byte);
  return ids;
}

int run_generate(const Context& context, const GenerateOptions& options) {
  // Generation runs on one rank: rank 0 alone works (any other rank has nothing to do).
  if (!context.root()) return 0;
  const std::string folder = checkpoint_folder(options.source);
  const config::Deck deck = io::read_checkpoint_deck(folder);
  const std::string manifest = (fs::path(folder) / "manifest.h5").string();
  if (deck.model.kind != config::ModelKind::gpt)
    throw UserError(fmt::format(
        "{}: model_kind is {} (allowed: a gpt checkpoint; generation continues text with a "
        "causal model)",
        manifest, to_string(deck.model.kind)));
  const io::CheckpointReader checkpoint(folder, deck);
  const bool bytes = deck.model.vocab == 256;
  const std::vector<std::int32_t> prompt = prompt_ids(options, deck.model.vocab);
  // The checkpoint holds fp32 weights in every precision; generation computes in fp32 (TF32
  // GEMMs for a tf32 run), also for a bf16 run: no bf16 rounding (model::StageModel).
  kernels::set_tf32(deck.model.precision == config::Precision::tf32);
  config::ModelConfig fp32_model = deck.model;
  if (fp32_model.precision == config::Precision::bf16)
    fp32_model.precision = config::Precision::fp32;
  // The whole model, whichever layout wrote the checkpoint: tensors have global names.
  const int L = deck.model.layers;
  model::StageModel model(fp32_model, 1, 0, L + 2);
  FloatView params("p2bw::params", static_cast<size_t>(model.num_params()));
  pipeline::load_stage_tensors(checkpoint, "params", model, params);
  fmt::print(stderr,
             "p2bw generate: {} (step {}, gpt {} x {}, seq_len {}, vocab {}): {} tokens, "
             "temperature {}, top-k {}, seed {}\n",
             folder, checkpoint.state().step, L, deck.model.hidden, deck.model.seq_len,
             deck.model.vocab, options.tokens, options.temperature, options.top_k, options.seed);
  // An empty prompt starts from a newline (bytes) or token 0; that start is not printed.
  const std::vector<std::int32_t> start =
      prompt.empty() ? std::vector<std::int32_t>{bytes ? '\n' : 0} : prompt;
  model::SamplingOptions sampling;
  sampling.temperature = options.temperature;
  sampling.top_k = options.top_k;
  sampling.seed = options.seed;
  std::vector<std::int32_t> text = prompt;
  for (std::int32_t id : model::generate_tokens(model, params, start, options.tokens, sampling))
    text.push_back(id);
  if (bytes && !options.print_ids)
    fmt::print("{}\n", data::bytes_to_text(text));
  else
    fmt::print("{}\n", fmt::join(text, " "));
  std::fflush(stdout);
  return 0;
}

}  // namespace

Command add_generate(CLI::App& app) {
  auto options = std::make_shared<GenerateOptions>();
  CLI::App* cli = app.add_subcommand(
      "generate", "continue a prompt with a GPT from a checkpoint of any layout, on one rank");
  cli->add_option("source", options->source,
                  "run folder (its newest checkpoint), checkpoints/step_<N> folder or its "
                  "manifest.h5")
      ->required()
      ->type_name("RUN|CHECKPOINT");
  cli->add_option("--prompt", options->prompt,
                  "text to continue, as bytes (byte-level models); empty: start after a newline")
      ->type_name("TEXT");
  cli->add_option("--prompt-tokens", options->prompt_tokens,
                  "the prompt as token ids, e.g. 15496,11 (any vocabulary; empty: token 0, or a "
                  "newline for bytes)")
      ->delimiter(',')
      ->type_name("ID,ID,...");
  cli->add_option("--tokens", options->tokens, "tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cli->add_option("--temperature", options->temperature,
                  "divides the logits; 0 = greedy (always the most likely token)")
      ->capture_default_str()
      ->check(finite_number())
      ->check(CLI::NonNegativeNumber);
  cli->add_option("--top-k", options->top_k, "draw among the k most likely tokens; 0 = among all")
      ->capture_default_str()
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cli->add_option("--seed", options->seed, "seed of the draws (the same seed, the same text)")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& text) {  // CLI11 would take -1 as 2^64 - 1
            const bool digits =
                !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
            return digits ? std::string() : "'" + text + "' is not a non-negative integer";
          },
          "UINT64"));
  cli->add_flag("--print-ids", options->print_ids,
                "print token ids, not text (always so for vocabularies other than bytes)");
  return {cli, [options](const Context& context) { return run_generate(context, *options); }};
}

}  // namespace p2bw::app
