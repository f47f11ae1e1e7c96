// The metrics file: rows round-trip, a resume truncates the steps it recomputes, traces append,
// the summary of p2bw inspect has the right numbers, and malformed files are user errors naming
// the file.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "io/hdf5_file.hpp"
#include "io/metrics_file.hpp"

namespace p2bw::io {
namespace {

namespace fs = std::filesystem;

// A fresh folder per test, with the pid in its name; removed at the end.
class MetricsFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           fmt::format("p2bw_metrics_{}_{}", ::getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

const char* kDeck =
    "model:\n  kind: gpt\n  layers: 4\n  hidden: 32\n  heads: 4\n  seq_len: 16\n  vocab: 256\n"
    "pipeline:\n  depth: 2\n  width: 1\n  schedule: 2bw\n  microbatches: 4\n"
    "train:\n  microbatch_size: 2\n";

MetricsHeader header(int depth = 2) {
  MetricsHeader h;
  h.deck_yaml = kDeck;
  h.p2bw_version = "0.9.test";
  h.kokkos = "Kokkos 3.4.1 (Serial)";
  h.start_time = "2025-01-31T12:00:00Z";
  h.depth = depth;
  h.width = 1;
  h.transport = "mpi (no rank has a GPU)";
  for (int s = 0; s < depth; ++s) {
    h.stage_map += fmt::format("stage {}: blocks {}-{}\n", s, 2 * s, 2 * s + 1);
    PredictedMemory p;
    p.weights = 1000 * (s + 1);
    p.gradients = 500;
    p.optimizer = 1000;
    p.activations = 300;
    p.buffers = 100;
    p.workspace = 100;
    h.predicted.push_back(p);
  }
  h.action_names = "F,B,Bi,Bw,send_act,recv_act";
  return h;
}

StepRow step_row(std::int64_t step, double loss, bool skipped = false) {
  StepRow r;
  r.step = step;
  r.loss = loss;
  r.lr = 1e-3 * step;
  r.grad_norm = 0.5 + step;
  r.tokens_per_s = 100.0 * step;
  r.time_s = 2.0 * step;
  r.skipped = skipped;
  return r;
}

// Stage s of step k: compute 1, wait s·0.5, idle 0.5 (so stage 0 has bubble 1/3, stage 1 1/2).
std::vector<StageRow> stage_rows(std::int64_t step, int depth = 2) {
  std::vector<StageRow> rows;
  for (int s = 0; s < depth; ++s) rows.push_back({step, 1.0, 0.5 * s, 0.5, 2000 + 100 * step + s});
  return rows;
}

template <class T>
std::vector<T> read(const std::string& file, const std::string& name) {
  return H5File(file, H5File::Mode::read).read<T>(name);
}

// The message of the UserError that `f` throws ("" if none).
template <class F>
std::string user_error(F&& f) {
  try {
    f();
  } catch (const UserError& error) {
    return error.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_F(MetricsFile, RowsRoundTrip) {
  const std::string file = path("metrics.h5");
  {
    MetricsWriter writer(file, header(), 1, false);
    writer.append(step_row(1, 3.0), stage_rows(1));
    writer.append(step_row(2, std::nan(""), true), stage_rows(2));
    writer.append(step_row(3, 2.5), stage_rows(3));
  }
  H5File h5(file, H5File::Mode::read);
  EXPECT_EQ(h5.string_attribute("/", "format"), "p2bw-metrics");
  EXPECT_EQ(h5.int_attribute("/", "format_version"), 1);
  EXPECT_EQ(h5.string_attribute("/", "deck"), kDeck);
  EXPECT_EQ(h5.int_attribute("/", "depth"), 2);
  EXPECT_EQ(h5.int_attribute("/", "width"), 1);
  EXPECT_EQ(h5.string_attribute("/", "start_time"), "2025-01-31T12:00:00Z");
  EXPECT_EQ(h5.read<std::int64_t>("/steps/step"), (std::vector<std::int64_t>{1, 2, 3}));
  const auto loss = h5.read<double>("/steps/loss");
  ASSERT_EQ(loss.size(), 3u);
  EXPECT_EQ(loss[0], 3.0);
  EXPECT_TRUE(std::isnan(loss[1]));
  EXPECT_EQ(loss[2], 2.5);
  EXPECT_EQ(h5.read<double>("/steps/lr"), (std::vector<double>{1e-3, 2e-3, 3e-3}));
  EXPECT_EQ(h5.read<double>("/steps/grad_norm"), (std::vector<double>{1.5, 2.5, 3.5}));
  EXPECT_EQ(h5.read<double>("/steps/tokens_per_s"), (std::vector<double>{100, 200, 300}));
  EXPECT_EQ(h5.read<double>("/steps/time_s"), (std::vector<double>{2, 4, 6}));
  EXPECT_EQ(h5.read<std::uint8_t>("/steps/skipped"), (std::vector<std::uint8_t>{0, 1, 0}));
  EXPECT_EQ(h5.read<std::int64_t>("/stages/1/step"), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(h5.read<double>("/stages/1/wait_s"), (std::vector<double>{0.5, 0.5, 0.5}));
  EXPECT_EQ(h5.read<std::int64_t>("/stages/1/peak_memory_bytes"),
            (std::vector<std::int64_t>{2101, 2201, 2301}));
  EXPECT_EQ(h5.int_attribute("/stages/1", "predicted_memory_bytes"), 4000);
  EXPECT_EQ(h5.int_attribute("/stages/1", "predicted_weights_bytes"), 2000);
  EXPECT_EQ(h5.int_attribute("/stages/0", "predicted_workspace_bytes"), 100);
  EXPECT_FALSE(h5.exists("/trace"));

  const MetricsContents c = read_metrics(file);
  EXPECT_EQ(c.steps.step.size(), 3u);
  ASSERT_EQ(c.stages.size(), 2u);
  EXPECT_EQ(c.stages[0].predicted.weights, 1000);
  EXPECT_EQ(c.stages[0].predicted_total, 3000);
  EXPECT_EQ(c.stage_map, "stage 0: blocks 0-1\nstage 1: blocks 2-3\n");
  EXPECT_EQ(c.transport, "mpi (no rank has a GPU)");
}

TEST_F(MetricsFile, ResumeTruncatesRecomputedSteps) {
  const std::string file = path("metrics.h5");
  {
    MetricsWriter writer(file, header(), 1, false);
    EXPECT_EQ(writer.elapsed_before(), 0.0);
    for (int k = 1; k <= 5; ++k) writer.append(step_row(k, 10.0 - k), stage_rows(k));
    writer.append_trace(0, {{0, 1, 0, 0.0, 1.0}});
  }
  {
    // A checkpoint after step 3: steps 4 and 5 are recomputed with other values.
    MetricsHeader h = header();
    h.start_time = "2025-02-01T08:00:00Z";
    MetricsWriter writer(file, h, 4, true);
    EXPECT_EQ(writer.elapsed_before(), 6.0);  // time_s of step 3: the resumed run adds to it
    for (int k = 4; k <= 6; ++k) writer.append(step_row(k, 100.0 + k), stage_rows(k));
  }
  EXPECT_EQ(read<std::int64_t>(file, "/steps/step"), (std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(read<double>(file, "/steps/loss"), (std::vector<double>{9, 8, 7, 104, 105, 106}));
  EXPECT_EQ(read<std::int64_t>(file, "/stages/0/step"),
            (std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(read<std::int64_t>(file, "/stages/1/peak_memory_bytes"),
            (std::vector<std::int64_t>{2101, 2201, 2301, 2401, 2501, 2601}));
  {
    H5File h5(file, H5File::Mode::read);
    EXPECT_EQ(h5.string_attribute("/", "start_time"), "2025-01-31T12:00:00Z");  // the original
    EXPECT_EQ(h5.int_list_attribute("/", "resumed_at_steps"), (std::vector<std::int64_t>{4}));
    EXPECT_FALSE(h5.exists("/trace"));  // the interrupted run's trace is dropped
  }

  // A second resume, from step 2 and on 3 stages: rows >= 2 go, stage 2 is added.
  {
    MetricsWriter writer(file, header(3), 2, true);
    EXPECT_EQ(writer.elapsed_before(), 2.0);
    writer.append(step_row(2, 50.0), stage_rows(2, 3));
  }
  const MetricsContents c = read_metrics(file);
  EXPECT_EQ(c.steps.step, (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(c.steps.loss, (std::vector<double>{9, 50}));
  EXPECT_EQ(c.resumed_at_steps, (std::vector<std::int64_t>{4, 2}));
  EXPECT_EQ(c.depth, 2);  // root attributes of the original run
  ASSERT_EQ(c.stages.size(), 3u);
  EXPECT_EQ(c.stages[2].step, (std::vector<std::int64_t>{2}));
  EXPECT_EQ(c.stages[1].step, (std::vector<std::int64_t>{1, 2}));
  EXPECT_TRUE(
      contains(c.resume_log, "step 4: depth 2, width 1, transport mpi (no rank has a GPU)"));
  EXPECT_TRUE(contains(c.resume_log, "step 2: depth 3"));
  // Appending an old step again is a bug of the caller.
  MetricsWriter writer(file, header(3), 3, true);
  writer.append(step_row(3, 1.0), stage_rows(3, 3));
  EXPECT_THROW(writer.append(step_row(3, 1.0), stage_rows(3, 3)), InternalError);
}

TEST_F(MetricsFile, ResumeWithoutAFileCreatesOne) {
  const std::string file = path("metrics.h5");
  {
    MetricsWriter writer(file, header(), 7, true);
    writer.append(step_row(7, 1.0), stage_rows(7));
  }
  const MetricsContents c = read_metrics(file);
  EXPECT_EQ(c.steps.step, (std::vector<std::int64_t>{7}));
  EXPECT_TRUE(c.resumed_at_steps.empty());
}

TEST_F(MetricsFile, ResumeIntoAForeignFileIsAUserError) {
  const std::string file = path("other.h5");
  {
    H5File h5(file, H5File::Mode::create);
    h5.set_attribute("/", "format", std::string("p2bw-simulation"));
  }
  const std::string message = user_error([&] { MetricsWriter(file, header(), 3, true); });
  EXPECT_TRUE(contains(message, file)) << message;
  EXPECT_TRUE(contains(message, "p2bw-metrics")) << message;
}

TEST_F(MetricsFile, TraceAppends) {
  const std::string file = path("metrics.h5");
  {
    MetricsWriter writer(file, header(), 1, false);
    // Rank 0: F 0..1, B 1..3, a send 3..4 and idle until F at 5..6: busy 4 of span 6.
    writer.append_trace(0, {{0, 1, 0, 0.0, 1.0}, {1, 1, 0, 1.0, 3.0}});
    writer.append_trace(0, {{4, 1, -1, 3.0, 4.0}, {0, 2, 0, 5.0, 6.0}});
    writer.append_trace(1, {{0, 1, 0, 1.0, 2.0}, {1, 1, 0, 2.0, 4.0}});
    writer.append(step_row(1, 2.0), stage_rows(1));
  }
  H5File h5(file, H5File::Mode::read);
  EXPECT_EQ(h5.string_attribute("/trace", "action_names"), "F,B,Bi,Bw,send_act,recv_act");
  EXPECT_EQ(h5.read<std::int32_t>("/trace/rank_0/kind"), (std::vector<std::int32_t>{0, 1, 4, 0}));
  EXPECT_EQ(h5.read<std::int32_t>("/trace/rank_0/microbatch"),
            (std::vector<std::int32_t>{1, 1, 1, 2}));
  EXPECT_EQ(h5.read<std::int32_t>("/trace/rank_0/version"),
            (std::vector<std::int32_t>{0, 0, -1, 0}));
  EXPECT_EQ(h5.read<double>("/trace/rank_0/end"), (std::vector<double>{1, 3, 4, 6}));
  EXPECT_EQ(h5.read<double>("/trace/rank_1/start"), (std::vector<double>{1, 2}));
  const MetricsContents c = read_metrics(file);
  ASSERT_EQ(c.trace.size(), 2u);
  EXPECT_NEAR(trace_bubble(c.trace[0], c.action_names), 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(trace_bubble(c.trace[1], c.action_names), 0.0, 1e-12);
  const std::string summary = summarize_metrics(file);
  EXPECT_TRUE(contains(summary, "rank 0: 4 events, busy 4.000000 s of 6.000000 s, bubble 0.3333"))
      << summary;
  EXPECT_TRUE(contains(summary, "rank 1: 2 events, busy 3.000000 s of 3.000000 s, bubble 0.0000"))
      << summary;
}

TEST_F(MetricsFile, SummaryHasTheNumbers) {
  const std::string file = path("metrics.h5");
  {
    MetricsWriter writer(file, header(), 1, false);
    writer.append(step_row(1, 3.0), stage_rows(1));
    writer.append(step_row(2, std::nan(""), true), stage_rows(2));
    writer.append(step_row(3, 2.25), stage_rows(3));
    writer.append(step_row(4, 2.75), stage_rows(4));
  }
  const std::string summary = summarize_metrics(file);
  for (const char* part : {
           "p2bw-metrics version 1, written by p2bw 0.9.test, started 2025-01-31T12:00:00Z",
           "model: gpt, layers 4, hidden 32, heads 4, seq_len 16, vocab 256",
           "layout: depth 2, width 1, schedule 2bw, 4 microbatches of 2 sequences; Kokkos 3.4.1",
           "  stage 1: blocks 2-3",
           "steps: 4 recorded (steps 1 to 4), 1 skipped (step 2)",
           "loss: first 3.0000 (step 1), last 2.7500 (step 4), min 2.2500 (step 3)",
           "mean 250.0 tokens/s; wall time 8.00 s at step 4",
           // stage 0: compute 1, wait 0, idle 0.5 -> 1/3; stage 1: wait 0.5 -> 1/2
           "    0      4     1.000000     0.000000     0.500000   0.3333",
           "    1      4     1.000000     0.500000     0.500000   0.5000",
           // peaks 2400 and 2401 bytes against 3000 and 4000 predicted
           "2.34 KiB     2.93 KiB   0.800",
           "2.34 KiB     3.91 KiB   0.600",
       })
    EXPECT_TRUE(contains(summary, part)) << "missing: " << part << "\n" << summary;
  EXPECT_FALSE(contains(summary, "trace:")) << summary;
  EXPECT_EQ(summarize_hdf5(file), summary);
}

TEST_F(MetricsFile, EmptyFileSummary) {
  const std::string file = path("metrics.h5");
  MetricsWriter(file, header(), 1, false);
  const std::string summary = summarize_metrics(file);
  EXPECT_TRUE(contains(summary, "steps: none recorded")) << summary;
}

// A valid file with two steps, then `spoil` applied to it; the UserError message of reading it.
template <class F>
std::string spoiled(const std::string& file, F&& spoil) {
  {
    MetricsWriter writer(file, header(), 1, false);
    writer.append(step_row(1, 3.0), stage_rows(1));
    writer.append(step_row(2, 2.0), stage_rows(2));
  }
  {
    H5File h5(file, H5File::Mode::read_write);
    spoil(h5);
  }
  const std::string message = user_error([&] { summarize_metrics(file); });
  EXPECT_EQ(user_error([&] { summarize_hdf5(file); }).empty(), message.empty());
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;  // one line
  EXPECT_EQ(message.rfind(file + ": ", 0), 0u) << message;      // starts with the file
  return message;
}

TEST_F(MetricsFile, MalformedFilesAreUserErrors) {
  EXPECT_TRUE(contains(
      spoiled(path("format.h5"),
              [](H5File& f) { f.set_attribute("/", "format", std::string("something-else")); }),
      "format is 'something-else'"));
  EXPECT_TRUE(
      contains(spoiled(path("version.h5"),
                       [](H5File& f) { f.set_attribute("/", "format_version", std::int64_t{2}); }),
               "format_version 2 is not supported (allowed: 1)"));
  EXPECT_TRUE(contains(spoiled(path("missing.h5"), [](H5File& f) { f.remove("/steps/loss"); }),
                       "dataset /steps/loss is missing"));
  EXPECT_TRUE(contains(spoiled(path("stage.h5"), [](H5File& f) { f.remove("/stages/1"); }),
                       "group /stages/1 is missing"));
  EXPECT_TRUE(
      contains(spoiled(path("length.h5"), [](H5File& f) { f.append<double>("/steps/lr", {1.0}); }),
               "different lengths (step 2, loss 2, lr 3,"));
  EXPECT_TRUE(
      contains(spoiled(path("stagelength.h5"), [](H5File& f) { f.resize("/stages/0/idle_s", 1); }),
               "/stages/0 have different lengths"));
  EXPECT_TRUE(
      contains(spoiled(path("attribute.h5"),
                       [](H5File& f) { f.set_attribute("/", "depth", std::string("two")); }),
               "depth"));

  // No format attribute at all: an HDF5 file from elsewhere.
  const std::string foreign = path("foreign.h5");
  H5File(foreign, H5File::Mode::create).write<double>("/x", {1.0}, {1});
  std::string message = user_error([&] { summarize_hdf5(foreign); });
  EXPECT_TRUE(contains(message, foreign + ": no format attribute")) << message;
  EXPECT_TRUE(contains(message, "p2bw-metrics")) << message;
  EXPECT_TRUE(contains(message, "p2bw-simulation")) << message;

  // A format p2bw inspect does not know.
  const std::string other = path("other.h5");
  H5File(other, H5File::Mode::create).set_attribute("/", "format", std::string("p2bw-unknown"));
  message = user_error([&] { summarize_hdf5(other); });
  EXPECT_TRUE(contains(message, "format 'p2bw-unknown' is not one p2bw inspect knows")) << message;

  // Not HDF5, and no file at all.
  const std::string text = path("text.h5");
  std::ofstream(text) << "not hdf5\n";
  message = user_error([&] { summarize_metrics(text); });
  EXPECT_TRUE(contains(message, text + ": not an HDF5 file")) << message;
  const std::string absent = path("absent.h5");
  message = user_error([&] { summarize_hdf5(absent); });
  EXPECT_TRUE(contains(message, absent + ": no such file")) << message;
}

TEST_F(MetricsFile, SimulationTimelineSummary) {
  // The layout of p2bw simulate's simulation.h5, two stages of F and B with a send between.
  const std::string file = path("simulation.h5");
  {
    H5File h5(file, H5File::Mode::create);
    h5.set_attribute("/", "format", std::string("p2bw-simulation"));
    h5.set_attribute("/", "format_version", std::int64_t{1});
    h5.set_attribute("/", "deck", std::string(kDeck));
    h5.set_attribute("/", "makespan", 8.0);
    h5.set_attribute("/", "steady_batch_time", 6.0);
    h5.set_attribute("/", "action_names", std::string("F,B,Bi,Bw,send_act"));
    for (int s = 0; s < 2; ++s) {
      const std::string g = fmt::format("/timeline/stage_{}/", s);
      h5.write<std::int32_t>(g + "action", {0, 4, 1}, {3});
      h5.write<std::int32_t>(g + "microbatch", {1, 1, 1}, {3});
      h5.write<std::int32_t>(g + "version", {0, -1, 0}, {3});
      h5.write<double>(g + "start", {0.0, 1.0, 4.0}, {3});
      h5.write<double>(g + "end", {1.0, 1.5, 6.0}, {3});
      h5.set_attribute(g.substr(0, g.size() - 1), "bubble", 0.25 * (s + 1));
    }
  }
  const std::string summary = summarize_hdf5(file);
  for (const char* part : {"p2bw-simulation version 1", "model: gpt, layers 4",
                           "makespan 8, steady-state time per batch 6",
                           "    1       3            3   0.5000", "bubble fraction: 0.5000"})
    EXPECT_TRUE(contains(summary, part)) << "missing: " << part << "\n" << summary;

  // Wrong version, missing dataset.
  H5File(file, H5File::Mode::read_write).set_attribute("/", "format_version", std::int64_t{9});
  EXPECT_TRUE(contains(user_error([&] { summarize_hdf5(file); }), "format_version 9"));
  H5File(file, H5File::Mode::read_write).set_attribute("/", "format_version", std::int64_t{1});
  H5File(file, H5File::Mode::read_write).remove("/timeline/stage_1/end");
  EXPECT_TRUE(contains(user_error([&] { summarize_hdf5(file); }),
                       "dataset /timeline/stage_1/end is missing"));
}

TEST(HDF5Series, AppendResizeAndChildren) {
  const std::string file =
      (fs::temp_directory_path() / fmt::format("p2bw_series_{}.h5", ::getpid())).string();
  {
    H5File h5(file, H5File::Mode::create);
    h5.create_series<float>("/a/b/x", 2);
    EXPECT_EQ(h5.length("/a/b/x"), 0u);
    h5.append<float>("/a/b/x", {1, 2, 3});
    h5.append<float>("/a/b/x", {});
    h5.append<float>("/a/b/x", {4});
    EXPECT_EQ(h5.read<float>("/a/b/x"), (std::vector<float>{1, 2, 3, 4}));
    h5.resize("/a/b/x", 2);
    h5.append<float>("/a/b/x", {9});
    EXPECT_EQ(h5.read<float>("/a/b/x"), (std::vector<float>{1, 2, 9}));
    h5.create_group("/a/c");
    h5.create_group("/a/c");
    EXPECT_EQ(h5.children("/a"), (std::vector<std::string>{"b", "c"}));
    h5.create_series<std::int32_t>("/a/c/y");
    h5.append<std::int32_t>("/a/c/y", {5, 6});
    h5.remove("/a/c");
    EXPECT_EQ(h5.children("/a"), (std::vector<std::string>{"b"}));
    h5.create_series<std::int32_t>("/a/c/y");  // a new series under the old name
    h5.append<std::int32_t>("/a/c/y", {7});
    EXPECT_EQ(h5.read<std::int32_t>("/a/c/y"), (std::vector<std::int32_t>{7}));
    h5.remove("/a/c");
    h5.set_attribute("/a", "list", std::vector<std::int64_t>{3, 1, 2});
    EXPECT_EQ(h5.int_list_attribute("/a", "list"), (std::vector<std::int64_t>{3, 1, 2}));
    EXPECT_TRUE(h5.has_attribute("/a", "list"));
    EXPECT_FALSE(h5.has_attribute("/a", "none"));
    EXPECT_FALSE(h5.has_attribute("/nowhere", "list"));
    EXPECT_THROW(h5.int_attribute("/a", "list"), UserError);  // not a single number
    EXPECT_THROW(h5.length("/a/missing"), UserError);
    EXPECT_THROW(h5.read<float>("/a/b"), UserError);  // a group, not a dataset
  }
  fs::remove(file);
}

}  // namespace
}  // namespace p2bw::io
