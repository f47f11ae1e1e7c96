// Deck parsing and validation: defaults, overrides, the resolved echo, and one test per kind of
// user error (message names the file, line, key and what is allowed).
#include <gtest/gtest.h>

#include <unistd.h>
#include <filesystem>
#include <fstream>

#include "config/deck_io.hpp"
#include "core/error.hpp"

namespace p2bw::config {
namespace {

const char* kBase = R"(model:
  kind: gpt
  layers: 4
  hidden: 32
  heads: 4
  seq_len: 16
pipeline:
  depth: 2
  schedule: flush
  microbatches: 4
train:
  steps: 10
data:
  path: corpus.txt
)";

class DeckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        std::filesystem::temp_directory_path() / ("p2bw_deck_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "corpus.txt") << "hello world\n";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  Deck parse(const std::string& text, std::vector<std::string> overrides = {}, int world = 0) {
    LoadOptions options;
    options.overrides = std::move(overrides);
    options.world_size = world;
    return parse_deck(text, "deck.yaml", dir_.string(), options);
  }

  // The message of the UserError that parsing throws (fails the test if none).
  std::string error_of(const std::string& text, std::vector<std::string> overrides = {},
                       int world = 0) {
    try {
      parse(text, std::move(overrides), world);
    } catch (const UserError& error) {
      const std::string message = error.what();
      EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
      return message;
    }
    ADD_FAILURE() << "no error for:\n" << text;
    return "";
  }

  static std::string replace(std::string text, const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return text.replace(at, from.size(), to);
  }

  std::filesystem::path dir_;
};

TEST_F(DeckTest, ValidDeckFillsDefaults) {
  const Deck deck = parse(kBase);
  EXPECT_EQ(deck.model.layers, 4);
  EXPECT_EQ(deck.model.vocab, 256);
  EXPECT_EQ(deck.pipeline.schedule, ScheduleKind::flush);
  EXPECT_EQ(deck.pipeline.sync_warmup_steps, 0);  // only 2bw has a synchronous warm-up
  EXPECT_EQ(deck.train.optimizer.kind, OptimizerKind::adamw);
  EXPECT_EQ(deck.data.path, (dir_ / "corpus.txt").string());  // relative to the deck's folder
  EXPECT_EQ(global_batch(deck), 4);
}

TEST_F(DeckTest, MicrobatchesDefaultToTwiceTheDepth) {
  const Deck deck = parse(replace(kBase, "  microbatches: 4\n", ""), {"pipeline.depth=3"});
  EXPECT_EQ(deck.pipeline.microbatches, 6);
}

TEST_F(DeckTest, TwoBwKeepsItsDefaultWarmupAndPrediction) {
  // min(1000, ⌈steps/2⌉): half of a short run, 1000 steps of a long one; then 2bw with weight
  // prediction 1.5.
  const std::string two_bw = replace(kBase, "schedule: flush", "schedule: 2bw");
  EXPECT_EQ(parse(two_bw, {"train.steps=200"}).pipeline.sync_warmup_steps, 100);
  EXPECT_EQ(parse(two_bw, {"train.steps=5"}).pipeline.sync_warmup_steps, 3);
  EXPECT_EQ(parse(two_bw, {"train.steps=100000"}).pipeline.sync_warmup_steps, 1000);
  EXPECT_EQ(parse(kBase, {"train.steps=200"}).pipeline.sync_warmup_steps, 0);  // flush
  EXPECT_EQ(parse(two_bw).pipeline.weight_prediction, 1.5);
  EXPECT_EQ(parse(two_bw, {"pipeline.weight_prediction=0"}).pipeline.weight_prediction, 0.0);
}

TEST_F(DeckTest, ResolvedYamlRoundTrips) {
  const Deck deck =
      parse(kBase, {"pipeline.partition=[1, 3]", "train.lr=0.0003", "output.trace=true"});
  const std::string text = to_yaml(deck);
  const Deck again = parse(text);
  EXPECT_EQ(to_yaml(again), text);
  EXPECT_EQ(again.pipeline.partition, (std::vector<int>{1, 3}));
  EXPECT_EQ(again.train.lr, 0.0003);
  EXPECT_TRUE(again.output.trace);
}

TEST_F(DeckTest, TransportKeyAndWhereItWasSet) {
  EXPECT_EQ(parse(kBase).pipeline.transport, TransportKind::automatic);
  EXPECT_EQ(where_set(parse(kBase), "pipeline.transport"), "deck.yaml");  // the default
  const Deck deck =
      parse(replace(kBase, "  microbatches: 4\n", "  microbatches: 4\n  transport: nccl\n"));
  EXPECT_EQ(deck.pipeline.transport, TransportKind::nccl);
  EXPECT_EQ(where_set(deck, "pipeline.transport"), "deck.yaml:11");
  EXPECT_EQ(where_set(deck, "pipeline.depth"), "deck.yaml:8");
  const Deck mpi = parse(kBase, {"pipeline.transport=mpi"});
  EXPECT_EQ(mpi.pipeline.transport, TransportKind::mpi);
  EXPECT_EQ(where_set(mpi, "pipeline.transport"), "--set 'pipeline.transport=mpi'");
  EXPECT_EQ(error_of(kBase, {"pipeline.transport=gloo"}),
            "--set 'pipeline.transport=gloo': pipeline.transport: 'gloo' is not a choice (allowed: "
            "auto | nccl | mpi)");
}

TEST_F(DeckTest, OverridesWinOverTheFile) {
  const Deck deck =
      parse(kBase, {"model.layers=8", "pipeline.schedule=gpipe", "train.optimizer.kind=sgd"});
  EXPECT_EQ(deck.model.layers, 8);
  EXPECT_EQ(deck.pipeline.schedule, ScheduleKind::gpipe);
  EXPECT_EQ(deck.train.optimizer.kind, OptimizerKind::sgd);
}

TEST_F(DeckTest, UnknownKeySuggestsTheClosest) {
  EXPECT_EQ(error_of(replace(kBase, "  heads: 4", "  head: 4")),
            "deck.yaml:5: model.head: unknown key; did you mean 'model.heads'? "
            "(allowed: kind, layers, hidden, heads, seq_len, vocab, precision)");
  EXPECT_NE(error_of(replace(kBase, "train:\n", "train:\n  depth: 2\n"))
                .find("did you mean 'pipeline.depth'"),
            std::string::npos);
  EXPECT_NE(error_of(kBase + std::string("modle:\n  kind: gpt\n")).find("did you mean 'model'"),
            std::string::npos);
}

TEST_F(DeckTest, PrecisionIsOneKeyAndTrainTf32IsRetired) {
  EXPECT_EQ(parse(kBase).model.precision, Precision::fp32);
  EXPECT_EQ(parse(kBase, {"model.precision=bf16"}).model.precision, Precision::bf16);
  EXPECT_EQ(parse(replace(kBase, "  seq_len: 16\n", "  seq_len: 16\n  precision: tf32\n"))
                .model.precision,
            Precision::tf32);
  EXPECT_EQ(error_of(kBase, {"model.precision=fp16"}),
            "--set 'model.precision=fp16': model.precision: 'fp16' is not a choice (allowed: fp32 "
            "| tf32 | bf16)");
  // train.tf32 of earlier versions: refused in a deck or --set, with the replacement ...
  const std::string old = replace(kBase, "  steps: 10\n", "  steps: 10\n  tf32: true\n");
  EXPECT_EQ(error_of(old),
            "deck.yaml:13: train.tf32: was replaced by model.precision (train.tf32: true is "
            "model.precision: tf32) (allowed: model.precision: fp32 | tf32 | bf16)");
  EXPECT_EQ(error_of(kBase, {"train.tf32=false"}),
            "--set 'train.tf32=false': train.tf32: was replaced by model.precision (train.tf32: "
            "true is model.precision: tf32) (allowed: model.precision: fp32 | tf32 | bf16)");
  // ... and translated in a deck an earlier p2bw wrote (a checkpoint's echo).
  LoadOptions earlier;
  earlier.earlier_keys = true;
  earlier.require_data = false;
  EXPECT_EQ(parse_deck(old, "manifest.h5", dir_.string(), earlier).model.precision,
            Precision::tf32);
  EXPECT_EQ(
      parse_deck(replace(old, "tf32: true", "tf32: false"), "manifest.h5", dir_.string(), earlier)
          .model.precision,
      Precision::fp32);
  // The echo names the precision and re-parses to it.
  const Deck bf16 = parse(kBase, {"model.precision=bf16"});
  EXPECT_NE(to_yaml(bf16).find("  precision: bf16\n"), std::string::npos);
  EXPECT_EQ(parse(to_yaml(bf16)).model.precision, Precision::bf16);
}

TEST_F(DeckTest, UnknownOverrideKey) {
  EXPECT_EQ(
      error_of(kBase, {"pipeline.dept=4"})
          .rfind(
              "--set 'pipeline.dept=4': pipeline.dept: unknown key; did you mean 'pipeline.depth'?",
              0),
      0u);
}

TEST_F(DeckTest, WrongTypes) {
  EXPECT_EQ(error_of(replace(kBase, "layers: 4", "layers: four")),
            "deck.yaml:3: model.layers: expected an integer, got 'four' (allowed: an integer 1 .. "
            "100000)");
  EXPECT_EQ(
      error_of(replace(kBase, "layers: 4", "layers: 4.5")).find("expected an integer, got '4.5'") !=
          std::string::npos,
      true);
  EXPECT_NE(error_of(kBase, {"pipeline.recompute=maybe"})
                .find("pipeline.recompute: expected true or false, got 'maybe'"),
            std::string::npos);
  EXPECT_NE(error_of(kBase, {"train.lr=fast"}).find("train.lr: expected a number, got 'fast'"),
            std::string::npos);
  EXPECT_NE(error_of(kBase, {"pipeline.schedule=1f1b"})
                .find("'1f1b' is not a choice (allowed: gpipe | flush | 2bw)"),
            std::string::npos);
  EXPECT_NE(
      error_of(replace(kBase, "  layers: 4", "  layers: [4]")).find("expected integer, got a list"),
      std::string::npos);
  EXPECT_NE(error_of(replace(kBase, "pipeline:\n  depth: 2", "pipeline: 2\nx:\n  depth: 2"))
                .find("deck.yaml:7: pipeline: is a section"),
            std::string::npos);
  EXPECT_NE(
      error_of(kBase, {"pipeline.partition=[2, x]"}).find("entry 'x' is not a positive integer"),
      std::string::npos);
}

TEST_F(DeckTest, OutOfRangeValues) {
  EXPECT_EQ(error_of(replace(kBase, "layers: 4", "layers: 0")),
            "deck.yaml:3: model.layers: 0 is out of range (allowed: an integer 1 .. 100000)");
  EXPECT_NE(
      error_of(kBase, {"train.lr=0"}).find("train.lr: 0 is out of range (allowed: a number > 0)"),
      std::string::npos);
  EXPECT_NE(error_of(kBase, {"train.optimizer.beta1=1.5"})
                .find("out of range (allowed: a number >= 0 and <= 1)"),
            std::string::npos);
  EXPECT_NE(error_of(kBase, {"pipeline.depth=-1"}).find("pipeline.depth: -1 is out of range"),
            std::string::npos);
  EXPECT_NE(error_of(kBase, {"train.lr_min=0.5"}).find("train.lr_min: 0.5 is above train.lr"),
            std::string::npos);
}

TEST_F(DeckTest, MissingRequiredKey) {
  EXPECT_EQ(
      error_of(replace(kBase, "  hidden: 32\n", "")),
      "deck.yaml:1: model.hidden: is required but missing (allowed: an integer 1 .. 1048576)");
}

TEST_F(DeckTest, DuplicateKey) {
  EXPECT_EQ(error_of(replace(kBase, "  layers: 4\n", "  layers: 4\n  layers: 5\n")),
            "deck.yaml:4: model.layers: is given twice (allowed: each key once)");
}

TEST_F(DeckTest, InvalidYaml) {
  EXPECT_EQ(error_of("model:\n  layers: [1, 2\n").rfind("deck.yaml:", 0), 0u);
  EXPECT_NE(error_of("- just\n- a list\n").find("the deck must be a YAML map"), std::string::npos);
}

TEST_F(DeckTest, TwoBwNeedsAtLeastDepthMicrobatches) {
  EXPECT_EQ(
      error_of(replace(kBase, "schedule: flush", "schedule: 2bw"), {"pipeline.microbatches=1"}),
      "--set 'pipeline.microbatches=1': pipeline.microbatches: 2bw needs m >= d, got m = 1 < d = 2 "
      "(allowed: an integer >= pipeline.depth = 2)");
  // flush and gpipe accept m < d
  EXPECT_NO_THROW(parse(kBase, {"pipeline.microbatches=1"}));
}

TEST_F(DeckTest, DepthLargerThanLayers) {
  EXPECT_EQ(error_of(kBase, {"pipeline.depth=5"}),
            "--set 'pipeline.depth=5': pipeline.depth: 5 stages for 4 layers (allowed: 1 .. "
            "model.layers = 4)");
}

TEST_F(DeckTest, HeadsMustDivideHidden) {
  EXPECT_EQ(error_of(replace(kBase, "heads: 4", "heads: 5")),
            "deck.yaml:5: model.heads: 5 does not divide model.hidden = 32 (allowed: a divisor of "
            "model.hidden)");
}

TEST_F(DeckTest, PartitionMustMatchDepthAndLayers) {
  EXPECT_NE(error_of(kBase, {"pipeline.partition=[1, 1, 2]"}).find("has 3 entries for 2 stages"),
            std::string::npos);
  EXPECT_NE(
      error_of(kBase, {"pipeline.partition=[1, 2]"}).find("sums to 3 blocks, the model has 4"),
      std::string::npos);
  EXPECT_NE(
      error_of(kBase, {"pipeline.partition=[0, 4]"}).find("entry '0' is not a positive integer"),
      std::string::npos);
}

TEST_F(DeckTest, WorldSizeMustBeDepthTimesWidth) {
  EXPECT_EQ(error_of(kBase, {}, 3),
            "deck.yaml:8: pipeline.depth: d·w = 2·1 = 2 ranks, but the run has 3 MPI ranks "
            "(allowed: launch with 2 ranks, e.g. mpiexec -n 2)");
  EXPECT_NO_THROW(parse(kBase, {"pipeline.width=2"}, 4));
}

TEST_F(DeckTest, MissingDataFile) {
  EXPECT_EQ(error_of(replace(kBase, "path: corpus.txt", "path: nowhere.txt")),
            "deck.yaml:14: data.path: no such file: " + (dir_ / "nowhere.txt").string() +
                " (allowed: an existing file (scripts/demo prepares data/))");
}

TEST_F(DeckTest, SwitchingScheduleIsOneKey) {
  // A 2bw deck with a warm-up stays valid when only the schedule changes.
  const std::string twobw = replace(kBase, "schedule: flush", "schedule: 2bw");
  EXPECT_NO_THROW(parse(twobw, {"pipeline.sync_warmup_steps=5", "pipeline.schedule=flush"}));
  EXPECT_NO_THROW(parse(twobw, {"pipeline.sync_warmup_steps=5", "pipeline.schedule=gpipe"}));
}

TEST_F(DeckTest, ByteTextNeedsTheByteVocabulary) {
  EXPECT_NE(error_of(kBase, {"model.vocab=100"})
                .find("model.vocab: 100 is too small for byte-level text"),
            std::string::npos);
  EXPECT_NE(error_of(kBase, {"model.kind=bert"}).find("plus BERT's mask token"), std::string::npos);
}

TEST_F(DeckTest, MissingDeckFile) {
  try {
    load_deck((dir_ / "absent.yaml").string());
    FAIL() << "no error";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("absent.yaml: cannot read the deck file"),
              std::string::npos);
  }
}

TEST(DeckKeys, EveryKeyIsDocumented) {
  for (const KeyInfo& key : deck_keys()) {
    EXPECT_FALSE(key.help.empty()) << key.path;
    EXPECT_FALSE(key.allowed.empty()) << key.path;
    EXPECT_FALSE(key.fallback.empty()) << key.path;
  }
}

}  // namespace
}  // namespace p2bw::config
