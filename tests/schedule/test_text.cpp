// Tests of the schedule text form: round trips, golden files, comments, malformed input.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "schedule/schedule.hpp"
#include "schedule/text.hpp"

namespace p2bw::schedule {
namespace {

std::vector<Schedule> grid() {
  std::vector<Schedule> all;
  for (int d = 1; d <= 5; ++d) {
    for (int batches = 1; batches <= 3; ++batches) {
      for (int m = 1; m <= d + 3; ++m) {
        all.push_back(generate(ScheduleKind::gpipe, d, m, batches));
        all.push_back(generate(ScheduleKind::flush, d, m, batches));
        for (int k = 0; k <= batches && m >= d; ++k) {
          all.push_back(generate(ScheduleKind::two_bw, d, m, batches, k));
        }
      }
    }
  }
  return all;
}

TEST(Text, RoundTripIsExact) {
  for (const Schedule& s : grid()) {
    const std::string text = to_text(s);
    const Schedule back = from_text(text);
    ASSERT_EQ(back, s) << text;
    ASSERT_EQ(to_text(back), text);
  }
}

TEST(Text, RoundTripKeepsFirstBatch) {
  for (ScheduleKind kind : {ScheduleKind::gpipe, ScheduleKind::flush, ScheduleKind::two_bw}) {
    for (int warmup : {0, 1, 2}) {
      if (warmup > 0 && kind != ScheduleKind::two_bw) continue;
      for (int first = 0; first < 5; ++first) {
        const Schedule s = generate(kind, 3, 4, 5, warmup, first);
        const std::string text = to_text(s);
        ASSERT_NE(text.find("\nfirst_batch " + std::to_string(first) + "\n"), std::string::npos);
        const Schedule back = from_text(text);
        ASSERT_EQ(back.first_batch, first);
        ASSERT_EQ(back, s) << text;
        ASSERT_EQ(to_text(back), text);
      }
    }
  }
}

TEST(Text, MissingFirstBatchLineReadsAsZero) {
  const Schedule s = generate(ScheduleKind::two_bw, 2, 3, 3, 1);
  std::string text = to_text(s);
  const size_t line = text.find("first_batch 0\n");
  ASSERT_NE(line, std::string::npos);
  text.erase(line, std::string("first_batch 0\n").size());
  const Schedule back = from_text(text);
  EXPECT_EQ(back.first_batch, 0);
  EXPECT_EQ(back, s);
  // Resumed schedules differ from fresh ones only in first_batch and their actions.
  Schedule resumed = generate(ScheduleKind::two_bw, 2, 3, 3, 1, 2);
  EXPECT_NE(resumed, s);
  resumed.actions = s.actions;
  EXPECT_NE(resumed, s);  // operator== compares first_batch
  resumed.first_batch = 0;
  EXPECT_EQ(resumed, s);
}

TEST(Text, RoundTripKeepsSplitBackwards) {
  Schedule s = generate(ScheduleKind::flush, 2, 2, 1);
  s.actions[1].push_back(Action::compute(ActionKind::backward_input, 1, 0));
  s.actions[1].push_back(Action::compute(ActionKind::backward_weight, 1, 0));
  EXPECT_EQ(from_text(to_text(s)), s);
}

TEST(Text, IgnoresCommentsAndBlankLines) {
  const Schedule s = generate(ScheduleKind::flush, 1, 1, 1);
  const std::string text =
      "# a hand-written schedule\n\np2bw-schedule 1   # format\nkind flush\nstages 1\n"
      "microbatches 1\nbatches 1\nsync_warmup 0\nstage 0\n  batch_begin 0\n\n  F 1 v0  # forward\n"
      "B 1 v0\nallreduce 0\nstep 0 v1 buf0 retire v0\nbatch_end 0\n";
  EXPECT_EQ(from_text(text), s);
}

std::string read_golden(const std::string& name) {
  const char* dir = std::getenv("P2BW_GOLDEN_DIR");
  std::ifstream in(std::string(dir) + "/" + name);
  EXPECT_TRUE(in.good()) << "cannot read golden file " << name;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The golden file without its leading '#' comment block.
std::string strip_leading_comments(const std::string& text) {
  size_t pos = 0;
  while (pos < text.size() && text[pos] == '#') pos = text.find('\n', pos) + 1;
  return text.substr(pos);
}

// Golden files written before the first_batch header line lack it (readers take 0): as to_text()
// writes them today, with "first_batch 0" after sync_warmup.
std::string with_first_batch_line(const std::string& text) {
  if (text.find("\nfirst_batch ") != std::string::npos) return text;
  const size_t sync = text.find("\nsync_warmup ");
  if (sync == std::string::npos) return text;
  const size_t end = text.find('\n', sync + 1) + 1;
  return text.substr(0, end) + "first_batch 0\n" + text.substr(end);
}

TEST(Text, GeneratorsMatchGoldenFiles) {
  if (std::getenv("P2BW_GOLDEN_DIR") == nullptr) {
    GTEST_SKIP() << "P2BW_GOLDEN_DIR is not set (ctest sets it to tests/schedule/golden)";
  }
  struct Case {
    const char* file;
    ScheduleKind kind;
    int d, m, batches, warmup, first_batch;
  };
  const Case cases[] = {
      {"flush_d2_m2_b2.txt", ScheduleKind::flush, 2, 2, 2, 0, 0},
      {"gpipe_d2_m2_b1.txt", ScheduleKind::gpipe, 2, 2, 1, 0, 0},
      {"2bw_d2_m2_b3.txt", ScheduleKind::two_bw, 2, 2, 3, 0, 0},
      {"2bw_d3_m3_b2.txt", ScheduleKind::two_bw, 3, 3, 2, 0, 0},
      {"2bw_d2_m2_b4_k1.txt", ScheduleKind::two_bw, 2, 2, 4, 1, 0},
      {"2bw_d2_m2_b5_k1_r3.txt", ScheduleKind::two_bw, 2, 2, 5, 1, 3},
  };
  for (const Case& c : cases) {
    const std::string golden = read_golden(c.file);
    const Schedule generated = generate(c.kind, c.d, c.m, c.batches, c.warmup, c.first_batch);
    EXPECT_EQ(to_text(generated), with_first_batch_line(strip_leading_comments(golden))) << c.file;
    EXPECT_EQ(from_text(golden), generated) << c.file;
  }
}

// Replaces 1-based line `n` of `text`.
std::string with_line(const std::string& text, int n, const std::string& line) {
  std::istringstream in(text);
  std::string out;
  int number = 0;
  for (std::string l; std::getline(in, l);) out += (++number == n ? line : l) + "\n";
  return out;
}

void expect_error(const std::string& text, int line, const std::string& fragment) {
  try {
    from_text(text);
    ADD_FAILURE() << "no error for:\n" << text;
  } catch (const ScheduleError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("line " + std::to_string(line) + ":"), std::string::npos) << what;
    EXPECT_NE(what.find(fragment), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

TEST(Text, MalformedTextNamesTheLine) {
  // Lines: 1 format, 2 kind, 3 stages, 4 microbatches, 5 batches, 6 sync_warmup, 7 first_batch,
  // 8 blank, 9 "stage 0", 10 batch_begin 0, 11 "F 1 v0", 12 send_act 1, 13 recv_grad 1, ...
  const std::string base = to_text(generate(ScheduleKind::flush, 2, 1, 1));
  ASSERT_NE(base.find("\nF 1 v0\nsend_act 1\nrecv_grad 1\nB 1 v0\n"), std::string::npos);
  expect_error("", 1, "empty");
  expect_error(with_line(base, 1, "hello"), 1, "not a p2bw schedule");
  expect_error(with_line(base, 1, "p2bw-schedule 2"), 1, "unsupported format version 2");
  expect_error(with_line(base, 2, "kind 3bw"), 2, "unknown schedule kind '3bw'");
  expect_error(with_line(base, 3, "stages two"), 3, "non-negative integer");
  expect_error(with_line(base, 3, "kind flush"), 3, "given twice");
  expect_error(with_line(base, 3, "depth 2"), 3, "unknown header field 'depth'");
  expect_error(with_line(base, 6, ""), 9, "missing header field 'sync_warmup'");
  expect_error(with_line(base, 3, "stages 0"), 9, "stages, microbatches, batches >= 1");
  expect_error(with_line(base, 7, "first_batch 1"), 9, "first_batch < batches");
  expect_error(with_line(base, 7, "first_batch -1"), 7, "got '-1'");
  expect_error(with_line(base, 9, "stage 1"), 9, "expected 'stage 0'");
  expect_error(with_line(base, 11, "X 1 v0"), 11, "unknown action 'X'");
  expect_error(with_line(base, 11, "F 1"), 11, "expected 'F <mb> v<version>'");
  expect_error(with_line(base, 11, "F 1 w0"), 11, "expected v<non-negative integer>");
  expect_error(with_line(base, 11, "F -1 v0"), 11, "got '-1'");
  expect_error(with_line(base, 12, "send_act 1 2"), 12, "expected 'send_act <mb>'");
  expect_error(with_line(base, 11, "step 0 v1 buf0 keep v0"), 11, "retire");
  expect_error(base + "stage 2\n", 28, "stage 2 does not exist (stages 0..1)");
  const std::string one_stage = base.substr(0, base.find("\nstage 1"));
  expect_error(one_stage, 17, "text ends before 'stage 1'");
}

}  // namespace
}  // namespace p2bw::schedule
