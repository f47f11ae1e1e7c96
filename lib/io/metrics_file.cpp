// Metrics file writer, reader and the summaries of `p2bw inspect`; see metrics_file.hpp.
#include "io/metrics_file.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <limits>
#include <sstream>

#include "core/bytes_text.hpp"
#include "core/error.hpp"
#include "io/h5_checks.hpp"
#include "io/simulation_file.hpp"

namespace p2bw::io {

using namespace h5_checks;

namespace {

constexpr hsize_t kStepChunk = 1024;
constexpr hsize_t kTraceChunk = 8192;

const std::vector<std::string> kStepSeries = {"step",         "loss",   "lr",     "grad_norm",
                                              "tokens_per_s", "time_s", "skipped"};
const std::vector<std::string> kEvalSeries = {"step", "loss"};
const std::vector<std::string> kStageSeries = {"step", "compute_s", "wait_s", "idle_s",
                                               "peak_memory_bytes"};
const std::vector<std::string> kTraceSeries = {"kind", "microbatch", "version", "start", "end"};

std::string stage_group(int stage) {
  return fmt::format("/stages/{}", stage);
}
std::string rank_group(int rank) {
  return fmt::format("/trace/rank_{}", rank);
}

// ---------------------------------------------------------------------------------------------
// Text helpers of the summaries.

std::string steps_list(const std::vector<std::int64_t>& steps, size_t shown = 10) {
  std::vector<std::string> items;
  for (size_t i = 0; i < steps.size() && i < shown; ++i) items.push_back(std::to_string(steps[i]));
  if (steps.size() > shown) items.push_back(fmt::format("... {} more", steps.size() - shown));
  return join(items);
}

double sum(const std::vector<double>& values) {
  double total = 0;
  for (double v : values) total += v;
  return total;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Writer.

MetricsWriter::MetricsWriter(const std::string& path, const MetricsHeader& header,
                             std::int64_t first_step, bool resume)
    : reopened_(resume && std::filesystem::exists(path)),
      file_(path, reopened_ ? H5File::Mode::read_write : H5File::Mode::create),
      depth_(header.depth),
      action_names_(header.action_names) {
  P2BW_ASSERT(header.depth >= 1 && header.width >= 1, "metrics header: depth and width >= 1");
  P2BW_ASSERT(header.predicted.size() == static_cast<size_t>(header.depth),
              fmt::format("metrics header: {} memory predictions for {} stages",
                          header.predicted.size(), header.depth));
  P2BW_ASSERT(first_step >= 1, "metrics: steps are 1-based");
  last_step_ = first_step - 1;
  if (reopened_) {
    const std::string format = format_of(file_, kMetricsFormat);
    if (format != kMetricsFormat)
      throw UserError(fmt::format("{}: format is '{}', cannot resume its metrics (allowed: {})",
                                  path, format, kMetricsFormat));
    require_version(file_, kMetricsFormat, kMetricsFormatVersion);
    truncate_group("/steps", kStepSeries, first_step);
    if (file_.exists("/stages"))
      for (int s : numbered_children(file_, "/stages", ""))
        truncate_group(stage_group(s), kStageSeries, first_step);
    for (int s = 0; s < depth_; ++s)
      if (!file_.exists(stage_group(s))) add_stage(s, header.predicted[s]);
    if (file_.exists("/eval")) truncate_group("/eval", kEvalSeries, first_step);
    if (file_.exists("/trace")) file_.remove("/trace");
    std::vector<std::int64_t> resumed;
    if (file_.has_attribute("/", "resumed_at_steps"))
      resumed = file_.int_list_attribute("/", "resumed_at_steps");
    resumed.push_back(first_step);
    file_.set_attribute("/", "resumed_at_steps", resumed);
    std::string log =
        file_.has_attribute("/", "resume_log") ? file_.string_attribute("/", "resume_log") : "";
    log += fmt::format("step {}: depth {}, width {}, transport {}, p2bw {}, started {}\n",
                       first_step, header.depth, header.width, header.transport,
                       header.p2bw_version, header.start_time);
    file_.set_attribute("/", "resume_log", log);
  } else {
    file_.set_attribute("/", "format", std::string(kMetricsFormat));
    file_.set_attribute("/", "format_version", kMetricsFormatVersion);
    file_.set_attribute("/", "p2bw_version", header.p2bw_version);
    file_.set_attribute("/", "deck", header.deck_yaml);
    file_.set_attribute("/", "depth", std::int64_t{header.depth});
    file_.set_attribute("/", "width", std::int64_t{header.width});
    file_.set_attribute("/", "stage_map", header.stage_map);
    file_.set_attribute("/", "kokkos", header.kokkos);
    file_.set_attribute("/", "start_time", header.start_time);
    file_.set_attribute("/", "transport", header.transport);
    file_.create_series<std::int64_t>("/steps/step", kStepChunk);
    for (const char* name : {"loss", "lr", "grad_norm", "tokens_per_s", "time_s"})
      file_.create_series<double>(std::string("/steps/") + name, kStepChunk);
    file_.create_series<std::uint8_t>("/steps/skipped", kStepChunk);
    for (int s = 0; s < depth_; ++s) add_stage(s, header.predicted[s]);
  }
  file_.flush();
}

void MetricsWriter::append_eval(std::int64_t step, double loss) {
  if (!file_.exists("/eval")) {
    file_.create_series<std::int64_t>("/eval/step", kStepChunk);
    file_.create_series<double>("/eval/loss", kStepChunk);
  }
  file_.append<std::int64_t>("/eval/step", {step});
  file_.append<double>("/eval/loss", {loss});
  file_.flush();
}

void MetricsWriter::add_stage(int stage, const PredictedMemory& predicted) {
  const std::string group = stage_group(stage);
  file_.create_series<std::int64_t>(group + "/step", kStepChunk);
  for (const char* name : {"compute_s", "wait_s", "idle_s"})
    file_.create_series<double>(group + "/" + name, kStepChunk);
  file_.create_series<std::int64_t>(group + "/peak_memory_bytes", kStepChunk);
  file_.set_attribute(group, "predicted_memory_bytes", predicted.total());
  file_.set_attribute(group, "predicted_weights_bytes", predicted.weights);
  file_.set_attribute(group, "predicted_gradients_bytes", predicted.gradients);
  file_.set_attribute(group, "predicted_optimizer_bytes", predicted.optimizer);
  file_.set_attribute(group, "predicted_activations_bytes", predicted.activations);
  file_.set_attribute(group, "predicted_buffers_bytes", predicted.buffers);
  file_.set_attribute(group, "predicted_workspace_bytes", predicted.workspace);
}

// Keeps the leading rows with step < first_step (no more than the shortest series has: a run
// killed inside an append may have left some series one row longer).
void MetricsWriter::truncate_group(const std::string& group, const std::vector<std::string>& series,
                                   std::int64_t first_step) {
  hsize_t rows = std::numeric_limits<hsize_t>::max();
  for (const std::string& name : series) rows = std::min(rows, file_.length(group + "/" + name));
  const std::vector<std::int64_t> steps = file_.read<std::int64_t>(group + "/step");
  hsize_t keep = 0;
  while (keep < rows && steps[keep] < first_step) ++keep;
  for (const std::string& name : series) file_.resize(group + "/" + name, keep);
  if (group == "/steps" && keep > 0) {
    last_step_ = std::max(last_step_, steps[keep - 1]);
    elapsed_before_ = file_.read<double>("/steps/time_s")[keep - 1];
  }
}

void MetricsWriter::append(const StepRow& row, const std::vector<StageRow>& stages) {
  P2BW_ASSERT(row.step > last_step_,
              fmt::format("metrics: step {} appended after step {}", row.step, last_step_));
  P2BW_ASSERT(stages.size() == static_cast<size_t>(depth_),
              fmt::format("metrics: {} stage rows for {} stages", stages.size(), depth_));
  file_.append<std::int64_t>("/steps/step", {row.step});
  file_.append<double>("/steps/loss", {row.loss});
  file_.append<double>("/steps/lr", {row.lr});
  file_.append<double>("/steps/grad_norm", {row.grad_norm});
  file_.append<double>("/steps/tokens_per_s", {row.tokens_per_s});
  file_.append<double>("/steps/time_s", {row.time_s});
  file_.append<std::uint8_t>("/steps/skipped", {static_cast<std::uint8_t>(row.skipped ? 1 : 0)});
  for (int s = 0; s < depth_; ++s) {
    const StageRow& stage = stages[s];
    const std::string group = stage_group(s) + "/";
    file_.append<std::int64_t>(group + "step", {stage.step});
    file_.append<double>(group + "compute_s", {stage.compute_s});
    file_.append<double>(group + "wait_s", {stage.wait_s});
    file_.append<double>(group + "idle_s", {stage.idle_s});
    file_.append<std::int64_t>(group + "peak_memory_bytes", {stage.peak_memory_bytes});
  }
  last_step_ = row.step;
  file_.flush();
}

void MetricsWriter::append_trace(int rank, const std::vector<TraceEvent>& events) {
  P2BW_ASSERT(rank >= 0, "metrics: trace of a negative rank");
  const std::string group = rank_group(rank);
  if (!file_.exists("/trace")) {
    file_.create_group("/trace");
    file_.set_attribute("/trace", "action_names", action_names_);
  }
  if (!file_.exists(group)) {
    for (const char* name : {"kind", "microbatch", "version"})
      file_.create_series<std::int32_t>(group + "/" + name, kTraceChunk);
    for (const char* name : {"start", "end"})
      file_.create_series<double>(group + "/" + name, kTraceChunk);
  }
  std::vector<std::int32_t> kind, microbatch, version;
  std::vector<double> start, end;
  for (const TraceEvent& e : events) {
    kind.push_back(e.kind);
    microbatch.push_back(e.microbatch);
    version.push_back(e.version);
    start.push_back(e.start);
    end.push_back(e.end);
  }
  file_.append(group + "/kind", kind);
  file_.append(group + "/microbatch", microbatch);
  file_.append(group + "/version", version);
  file_.append(group + "/start", start);
  file_.append(group + "/end", end);
  file_.flush();
}

// ---------------------------------------------------------------------------------------------
// Reader.

MetricsContents read_metrics(const std::string& path) {
  const H5File file(path, H5File::Mode::read);
  const std::string format = format_of(file, kMetricsFormat);
  if (format != kMetricsFormat)
    throw UserError(fmt::format("{}: format is '{}', not a metrics file (allowed: {})", path,
                                format, kMetricsFormat));
  require_version(file, kMetricsFormat, kMetricsFormatVersion);
  MetricsContents c;
  c.path = path;
  c.format_version = kMetricsFormatVersion;
  c.p2bw_version = file.string_attribute("/", "p2bw_version");
  c.deck_yaml = file.string_attribute("/", "deck");
  c.depth = file.int_attribute("/", "depth");
  c.width = file.int_attribute("/", "width");
  c.stage_map = file.string_attribute("/", "stage_map");
  c.kokkos = file.string_attribute("/", "kokkos");
  c.start_time = file.string_attribute("/", "start_time");
  if (c.depth < 1 || c.width < 1)
    throw UserError(
        fmt::format("{}: depth {} and width {} (allowed: both >= 1)", path, c.depth, c.width));
  if (file.has_attribute("/", "resumed_at_steps"))
    c.resumed_at_steps = file.int_list_attribute("/", "resumed_at_steps");
  if (file.has_attribute("/", "resume_log"))
    c.resume_log = file.string_attribute("/", "resume_log");
  if (file.has_attribute("/", "transport"))  // absent in files written before it was recorded
    c.transport = file.string_attribute("/", "transport");

  common_length(file, "/steps", kStepSeries);
  c.steps.step = file.read<std::int64_t>("/steps/step");
  c.steps.loss = file.read<double>("/steps/loss");
  c.steps.lr = file.read<double>("/steps/lr");
  c.steps.grad_norm = file.read<double>("/steps/grad_norm");
  c.steps.tokens_per_s = file.read<double>("/steps/tokens_per_s");
  c.steps.time_s = file.read<double>("/steps/time_s");
  c.steps.skipped = file.read<std::uint8_t>("/steps/skipped");

  if (!file.exists("/stages"))
    throw UserError(
        fmt::format("{}: group /stages is missing (allowed: a file with /stages/0 .. "
                    "/stages/{})",
                    path, c.depth - 1));
  const std::vector<int> stages = numbered_children(file, "/stages", "");
  for (int s = 0; s < c.depth; ++s)
    if (!std::binary_search(stages.begin(), stages.end(), s))
      throw UserError(
          fmt::format("{}: group /stages/{} is missing (allowed: a file with "
                      "/stages/0 .. /stages/{} for depth {})",
                      path, s, c.depth - 1, c.depth));
  for (int s : stages) {
    const std::string group = stage_group(s);
    common_length(file, group, kStageSeries);
    MetricsContents::Stage stage;
    stage.index = s;
    stage.step = file.read<std::int64_t>(group + "/step");
    stage.compute_s = file.read<double>(group + "/compute_s");
    stage.wait_s = file.read<double>(group + "/wait_s");
    stage.idle_s = file.read<double>(group + "/idle_s");
    stage.peak_memory_bytes = file.read<std::int64_t>(group + "/peak_memory_bytes");
    stage.predicted_total = file.int_attribute(group, "predicted_memory_bytes");
    stage.predicted.weights = file.int_attribute(group, "predicted_weights_bytes");
    stage.predicted.gradients = file.int_attribute(group, "predicted_gradients_bytes");
    stage.predicted.optimizer = file.int_attribute(group, "predicted_optimizer_bytes");
    stage.predicted.activations = file.int_attribute(group, "predicted_activations_bytes");
    stage.predicted.buffers = file.int_attribute(group, "predicted_buffers_bytes");
    stage.predicted.workspace = file.int_attribute(group, "predicted_workspace_bytes");
    c.stages.push_back(std::move(stage));
  }

  if (file.exists("/eval")) {
    common_length(file, "/eval", kEvalSeries);
    c.eval.step = file.read<std::int64_t>("/eval/step");
    c.eval.loss = file.read<double>("/eval/loss");
  }
  if (file.exists("/trace")) {
    c.has_trace = true;
    c.action_names = file.string_attribute("/trace", "action_names");
    for (int r : numbered_children(file, "/trace", "rank_")) {
      const std::string group = rank_group(r);
      common_length(file, group, kTraceSeries);
      MetricsContents::TraceRank rank;
      rank.rank = r;
      rank.kind = file.read<std::int32_t>(group + "/kind");
      rank.microbatch = file.read<std::int32_t>(group + "/microbatch");
      rank.version = file.read<std::int32_t>(group + "/version");
      rank.start = file.read<double>(group + "/start");
      rank.end = file.read<double>(group + "/end");
      c.trace.push_back(std::move(rank));
    }
  }
  return c;
}

double trace_bubble(const MetricsContents::TraceRank& rank, const std::string& action_names) {
  const auto [busy, span] =
      busy_and_span(rank.kind, rank.start, rank.end, compute_codes(action_names));
  return span > 0 ? 1.0 - busy / span : 0.0;
}

// ---------------------------------------------------------------------------------------------
// Summaries.

std::string summarize_metrics(const std::string& path) {
  const MetricsContents c = read_metrics(path);
  std::string out;
  auto line = [&out](const std::string& text) { out += text + "\n"; };

  std::string resumed;
  if (!c.resumed_at_steps.empty())
    resumed = fmt::format(", resumed at step{} {}", c.resumed_at_steps.size() > 1 ? "s" : "",
                          steps_list(c.resumed_at_steps));
  line(fmt::format("{}: {} version {}, written by p2bw {}, started {}{}", path, kMetricsFormat,
                   c.format_version, c.p2bw_version, c.start_time, resumed));
  const auto [model, schedule] = deck_lines(c.deck_yaml);
  line(model);
  line(fmt::format("layout: depth {}, width {}, {}; {}", c.depth, c.width, schedule, c.kokkos));
  if (!c.stage_map.empty()) {
    line("stage map:");
    std::stringstream in(c.stage_map);
    for (std::string text; std::getline(in, text);) line("  " + text);
  }

  const auto& st = c.steps;
  const size_t n = st.step.size();
  std::vector<std::int64_t> skipped;
  for (size_t i = 0; i < n; ++i)
    if (st.skipped[i]) skipped.push_back(st.step[i]);
  if (n == 0) {
    line("steps: none recorded");
  } else {
    line(fmt::format("steps: {} recorded (steps {} to {}), {} skipped{}", n, st.step.front(),
                     st.step.back(), skipped.size(),
                     skipped.empty() ? "" : " (step " + steps_list(skipped) + ")"));
    // Loss over the steps that were not skipped and are finite.
    std::vector<size_t> good;
    for (size_t i = 0; i < n; ++i)
      if (!st.skipped[i] && std::isfinite(st.loss[i])) good.push_back(i);
    if (good.empty()) {
      line("loss: no finite loss recorded");
    } else {
      size_t best = good.front();
      for (size_t i : good)
        if (st.loss[i] < st.loss[best]) best = i;
      line(fmt::format("loss: first {:.4f} (step {}), last {:.4f} (step {}), min {:.4f} (step {})",
                       st.loss[good.front()], st.step[good.front()], st.loss[good.back()],
                       st.step[good.back()], st.loss[best], st.step[best]));
    }
    double tokens = 0;
    size_t counted = 0;
    for (double t : st.tokens_per_s)
      if (std::isfinite(t)) tokens += t, ++counted;
    line(fmt::format("throughput: mean {:.1f} tokens/s; wall time {:.2f} s at step {}",
                     counted ? tokens / counted : 0.0, st.time_s.back(), st.step.back()));
  }
  if (!c.eval.step.empty()) {
    const auto best =
        std::min_element(c.eval.loss.begin(), c.eval.loss.end()) - c.eval.loss.begin();
    line(fmt::format("validation loss: {} evaluations, last {:.4f} (step {}), min {:.4f} (step {})",
                     c.eval.step.size(), c.eval.loss.back(), c.eval.step.back(),
                     c.eval.loss[static_cast<size_t>(best)],
                     c.eval.step[static_cast<size_t>(best)]));
  }

  line("per stage, mean seconds per step (bubble = (wait + idle) / (compute + wait + idle)):");
  line(fmt::format("{:>5} {:>6} {:>12} {:>12} {:>12} {:>8} {:>12} {:>12} {:>7}", "stage", "steps",
                   "compute_s", "wait_s", "idle_s", "bubble", "peak", "predicted", "ratio"));
  for (const auto& s : c.stages) {
    const double rows = static_cast<double>(s.step.size());
    const double compute = sum(s.compute_s), wait = sum(s.wait_s), idle = sum(s.idle_s);
    const double total = compute + wait + idle;
    const std::int64_t peak =
        s.peak_memory_bytes.empty()
            ? 0
            : *std::max_element(s.peak_memory_bytes.begin(), s.peak_memory_bytes.end());
    line(fmt::format("{:>5} {:>6} {:>12.6f} {:>12.6f} {:>12.6f} {:>8} {:>12} {:>12} {:>7}", s.index,
                     s.step.size(), rows > 0 ? compute / rows : 0.0, rows > 0 ? wait / rows : 0.0,
                     rows > 0 ? idle / rows : 0.0,
                     total > 0 ? fmt::format("{:.4f}", (wait + idle) / total) : "-",
                     s.peak_memory_bytes.empty() ? "-" : bytes_text(static_cast<double>(peak)),
                     bytes_text(static_cast<double>(s.predicted_total)),
                     s.predicted_total > 0 && !s.peak_memory_bytes.empty()
                         ? fmt::format("{:.3f}", static_cast<double>(peak) / s.predicted_total)
                         : "-"));
  }

  if (c.has_trace) {
    line(fmt::format("trace: {} rank{} (bubble = 1 - forward/backward time / span)", c.trace.size(),
                     c.trace.size() == 1 ? "" : "s"));
    const std::vector<bool> compute = compute_codes(c.action_names);
    for (const auto& r : c.trace) {
      const auto [busy, span] = busy_and_span(r.kind, r.start, r.end, compute);
      line(fmt::format("  rank {}: {} events, busy {:.6f} s of {:.6f} s, bubble {}", r.rank,
                       r.kind.size(), busy, span,
                       span > 0 ? fmt::format("{:.4f}", 1.0 - busy / span) : "-"));
    }
  }
  return out;
}

std::string summarize_hdf5(const std::string& path) {
  const std::string known =
      fmt::format("{} (p2bw train), {} (p2bw simulate)", kMetricsFormat, kSimulationFormat);
  std::string format;
  {
    const H5File file(path, H5File::Mode::read);
    format = format_of(file, known);
  }
  if (format == kMetricsFormat) return summarize_metrics(path);
  if (format == kSimulationFormat) return summarize_simulation(path);
  throw UserError(fmt::format("{}: format '{}' is not one p2bw inspect knows (allowed: {})", path,
                              format, known));
}

std::string utc_timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

}  // namespace p2bw::io
