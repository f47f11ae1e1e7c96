// The simulator's timeline file (format "p2bw-simulation", version 1), written by p2bw simulate
// and summarised by p2bw inspect:
//   /                    attributes format, format_version, deck (YAML text), schedule (text
//                        form), makespan, steady_batch_time (cost units), action_names
//   /timeline/stage_<s>/ 1-D: action, microbatch, version (int32), start, end (float64); a
//                        synchronised all-reduce's wait is left out of its event (a gap);
//                        attribute bubble
#pragma once

#include <cstdint>
#include <string>

#include "config/deck.hpp"
#include "schedule/schedule.hpp"
#include "schedule/simulate.hpp"

namespace p2bw::io {

inline constexpr const char* kSimulationFormat = "p2bw-simulation";
inline constexpr std::int64_t kSimulationFormatVersion = 1;

// Writes the replay `report` of `schedule` (made from `deck`) to `path`, replacing any file.
void write_simulation(const std::string& path, const schedule::Schedule& schedule,
                      const schedule::Report& report, const config::Deck& deck);

// The text p2bw inspect prints for a timeline: model, layout, makespan, steady-state time per
// batch, per-stage events, busy time and bubble. Validates the file (UserError naming it).
std::string summarize_simulation(const std::string& path);

}  // namespace p2bw::io
