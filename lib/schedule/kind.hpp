// The schedule kinds p2bw runs (one enum for the deck, the schedules, the planner and the
// executor) and their names in decks and messages. forward_only is evaluation (validation loss):
// never a training schedule, so decks and the planner do not offer it.
#pragma once

#include <string>

namespace p2bw::schedule {

enum class ScheduleKind { gpipe, flush, two_bw, forward_only };

const char* to_string(ScheduleKind kind);       // "gpipe", "flush", "2bw", "forward-only"
ScheduleKind parse_kind(const std::string& s);  // throws ScheduleError

}  // namespace p2bw::schedule
