// Text form of a schedule: readable, diffable and hand-editable; from_text(to_text(s)) == s.
//
//   p2bw-schedule 1              format version (required first line)
//   kind 2bw                     gpipe | flush | 2bw
//   stages 2                     d
//   microbatches 2               m per batch
//   batches 3
//   sync_warmup 0                K flush batches before 2bw
//   first_batch 0                run batch the schedule starts at (optional when reading: 0)
//
//   stage 0                      then one action per line, in execution order
//   batch_begin 0
//   F 1 v0                       forward of microbatch 1 on W(0); B, Bi, Bw likewise
//   send_act 1                   also recv_act, send_grad, recv_grad <mb>
//   send_act_recv_grad 2 1       exchange: send activation of mb 2, receive gradient of mb 1
//   send_grad_recv_act 1 3       exchange: send gradient of mb 1, receive activation of mb 3
//   allreduce 0                  gradient all-reduce of batch 0
//   step 0 v1 buf1 retire none   step after batch 0 writes W(1) into buffer 1 (retire vN|none)
//   batch_end 0
//
// Blank lines and '#' comments (to the end of a line) are ignored. Stage sections come in order
// 0 .. d-1. Malformed text throws ScheduleError("schedule text line N: ...").
#pragma once

#include <ostream>
#include <string>

#include "schedule/schedule.hpp"

namespace p2bw::schedule {

std::string to_text(const Schedule& schedule);
Schedule from_text(const std::string& text);

// One action in the text form, e.g. "F 3 v0".
std::string to_string(const Action& action);

// The text form's keyword of every ActionKind, comma-separated in code order (for HDF5 traces
// and timelines, which store kinds as integers).
std::string action_kind_names();
inline std::ostream& operator<<(std::ostream& out, const Action& action) {
  return out << to_string(action);
}

}  // namespace p2bw::schedule
