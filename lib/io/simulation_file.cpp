// The simulator's timeline file; see simulation_file.hpp.
#include "io/simulation_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "config/deck_io.hpp"
#include "core/error.hpp"
#include "io/h5_checks.hpp"
#include "io/hdf5_file.hpp"
#include "schedule/text.hpp"

namespace p2bw::io {

using namespace h5_checks;

namespace {

const std::vector<std::string> kTimelineSeries = {"action", "microbatch", "version", "start",
                                                  "end"};

}  // namespace

void write_simulation(const std::string& path, const schedule::Schedule& sched,
                      const schedule::Report& report, const config::Deck& deck) {
  H5File file(path, H5File::Mode::create);
  file.set_attribute("/", "format", std::string(kSimulationFormat));
  file.set_attribute("/", "format_version", kSimulationFormatVersion);
  file.set_attribute("/", "deck", config::to_yaml(deck));
  file.set_attribute("/", "schedule", schedule::to_text(sched));
  file.set_attribute("/", "makespan", report.makespan);
  file.set_attribute("/", "steady_batch_time", report.steady_batch_time);
  file.set_attribute("/", "action_names", schedule::action_kind_names());
  for (size_t s = 0; s < report.timeline.stages.size(); ++s) {
    std::vector<std::int32_t> action, microbatch, version;
    std::vector<double> start, end;
    for (const schedule::Event& e : report.timeline.stages[s]) {
      action.push_back(static_cast<std::int32_t>(e.action.kind));
      microbatch.push_back(e.action.mb);
      version.push_back(e.action.version);
      start.push_back(e.start);
      end.push_back(schedule::work_end(e));  // a synchronised all-reduce's wait is a gap
    }
    const std::string group = fmt::format("/timeline/stage_{}/", s);
    const std::vector<hsize_t> shape{action.size()};
    file.write(group + "action", action, shape);
    file.write(group + "microbatch", microbatch, shape);
    file.write(group + "version", version, shape);
    file.write(group + "start", start, shape);
    file.write(group + "end", end, shape);
    file.set_attribute(group.substr(0, group.size() - 1), "bubble", report.stages[s].bubble);
  }
}

std::string summarize_simulation(const std::string& path) {
  const H5File file(path, H5File::Mode::read);
  const std::string format = format_of(file, kSimulationFormat);
  if (format != kSimulationFormat)
    throw UserError(fmt::format("{}: format is '{}', not a simulation timeline (allowed: {})", path,
                                format, kSimulationFormat));
  require_version(file, kSimulationFormat, kSimulationFormatVersion);
  const std::string deck = file.string_attribute("/", "deck");
  const double makespan = file.double_attribute("/", "makespan");
  const double steady = file.double_attribute("/", "steady_batch_time");
  const std::vector<bool> compute = compute_codes(file.string_attribute("/", "action_names"));
  if (!file.exists("/timeline"))
    throw UserError(fmt::format(
        "{}: group /timeline is missing (allowed: a file with /timeline/stage_<s>)", path));
  const std::vector<int> stages = numbered_children(file, "/timeline", "stage_");

  std::string out;
  auto line = [&out](const std::string& text) { out += text + "\n"; };
  line(fmt::format("{}: {} version {} (the timeline of p2bw simulate)", path, kSimulationFormat,
                   kSimulationFormatVersion));
  const auto [model, schedule] = deck_lines(deck);
  line(model);
  line(fmt::format("layout: depth {}, {}", stages.size(), schedule));
  line(fmt::format("makespan {:.6g}, steady-state time per batch {:.6g} (cost units)", makespan,
                   steady));
  line(fmt::format("{:>5} {:>7} {:>12} {:>8}", "stage", "events", "busy", "bubble"));
  double worst = 0;
  for (int s : stages) {
    const std::string group = fmt::format("/timeline/stage_{}", s);
    const hsize_t events = common_length(file, group, kTimelineSeries);
    const auto [busy, span] = busy_and_span(file.read<std::int32_t>(group + "/action"),
                                            file.read<double>(group + "/start"),
                                            file.read<double>(group + "/end"), compute);
    (void)span;
    const double bubble = file.double_attribute(group, "bubble");
    worst = std::max(worst, bubble);
    line(fmt::format("{:>5} {:>7} {:>12.6g} {:>8.4f}", s, events, busy, bubble));
  }
  line(fmt::format("bubble fraction: {:.4f} (largest over the stages)", worst));
  return out;
}

}  // namespace p2bw::io
