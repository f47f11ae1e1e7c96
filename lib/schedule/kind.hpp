// The schedule kinds p2bw runs (one enum for the deck, the schedules, the planner and the
// executor) and their names in decks and messages.
#pragma once

#include <string>

namespace p2bw::schedule {

enum class ScheduleKind { gpipe, flush, two_bw };

const char* to_string(ScheduleKind kind);       // "gpipe", "flush", "2bw"
ScheduleKind parse_kind(const std::string& s);  // throws ScheduleError

}  // namespace p2bw::schedule
