// Writes and parses the text form of a schedule (format described in text.hpp).
#include "schedule/text.hpp"

#include <algorithm>
#include <charconv>
#include <sstream>
#include <vector>

namespace p2bw::schedule {

namespace {

constexpr int kFormatVersion = 1;

struct Keyword {
  ActionKind kind;
  const char* word;
  const char* usage;
};

constexpr Keyword kKeywords[] = {
    {ActionKind::forward, "F", "F <mb> v<version>"},
    {ActionKind::backward, "B", "B <mb> v<version>"},
    {ActionKind::backward_input, "Bi", "Bi <mb> v<version>"},
    {ActionKind::backward_weight, "Bw", "Bw <mb> v<version>"},
    {ActionKind::send_act, "send_act", "send_act <mb>"},
    {ActionKind::recv_act, "recv_act", "recv_act <mb>"},
    {ActionKind::send_grad, "send_grad", "send_grad <mb>"},
    {ActionKind::recv_grad, "recv_grad", "recv_grad <mb>"},
    {ActionKind::send_act_recv_grad, "send_act_recv_grad", "send_act_recv_grad <mb> <mb>"},
    {ActionKind::send_grad_recv_act, "send_grad_recv_act", "send_grad_recv_act <mb> <mb>"},
    {ActionKind::allreduce, "allreduce", "allreduce <batch>"},
    {ActionKind::step, "step", "step <batch> v<version> buf<buffer> retire v<version>|none"},
    {ActionKind::batch_begin, "batch_begin", "batch_begin <batch>"},
    {ActionKind::batch_end, "batch_end", "batch_end <batch>"},
};

const Keyword& keyword(ActionKind kind) {
  for (const Keyword& k : kKeywords) {
    if (k.kind == kind) return k;
  }
  return kKeywords[0];
}

[[noreturn]] void fail(int line, const std::string& what) {
  throw ScheduleError("schedule text line " + std::to_string(line) + ": " + what);
}

// A non-negative integer, optionally after a fixed prefix ("v3", "buf1").
int parse_number(const std::string& token, const std::string& prefix, int line) {
  const char* first = token.data() + prefix.size();
  const char* last = token.data() + token.size();
  int value = -1;
  if (token.compare(0, prefix.size(), prefix) == 0 && first != last) {
    const auto [end, err] = std::from_chars(first, last, value);
    if (err == std::errc() && end == last && value >= 0) return value;
  }
  fail(line, "expected " + prefix + "<non-negative integer>, got '" + token + "'");
}

std::vector<std::string> tokenize(std::string line) {
  if (const auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
  std::istringstream in(line);
  std::vector<std::string> tokens;
  for (std::string t; in >> t;) tokens.push_back(t);
  return tokens;
}

Action parse_action(const std::vector<std::string>& tok, int line) {
  const Keyword* key = nullptr;
  for (const Keyword& k : kKeywords) {
    if (tok[0] == k.word) key = &k;
  }
  if (key == nullptr) fail(line, "unknown action '" + tok[0] + "'");
  const ActionKind kind = key->kind;
  const size_t arity = is_compute(kind) || kind == ActionKind::send_act_recv_grad ||
                               kind == ActionKind::send_grad_recv_act
                           ? 3
                       : kind == ActionKind::step ? 6
                                                  : 2;
  if (tok.size() != arity || (kind == ActionKind::step && tok[4] != "retire")) {
    fail(line, std::string("expected '") + key->usage + "'");
  }
  const int first = parse_number(tok[1], "", line);
  if (is_compute(kind)) return Action::compute(kind, first, parse_number(tok[2], "v", line));
  if (kind == ActionKind::send_act_recv_grad || kind == ActionKind::send_grad_recv_act) {
    return Action::exchange(kind, first, parse_number(tok[2], "", line));
  }
  if (is_communication(kind)) return Action::message(kind, first);
  if (kind == ActionKind::step) {
    const int retired = tok[5] == "none" ? -1 : parse_number(tok[5], "v", line);
    return Action::step(first, parse_number(tok[2], "v", line), parse_number(tok[3], "buf", line),
                        retired);
  }
  return Action::marker(kind, first);
}

}  // namespace

std::string to_string(const Action& a) {
  std::string s = keyword(a.kind).word;
  const auto num = [&s](const char* prefix, int value) {
    s += ' ';
    s += prefix;
    s += std::to_string(value);
  };
  if (is_compute(a.kind)) {
    num("", a.mb);
    num("v", a.version);
  } else if (a.kind == ActionKind::send_act_recv_grad || a.kind == ActionKind::send_grad_recv_act) {
    num("", a.mb);
    num("", a.recv_mb);
  } else if (is_communication(a.kind)) {
    num("", a.mb);
  } else if (a.kind == ActionKind::step) {
    num("", a.batch);
    num("v", a.version);
    num("buf", a.buffer);
    s += " retire";
    if (a.retired < 0) {
      s += " none";
    } else {
      num("v", a.retired);
    }
  } else {
    num("", a.batch);
  }
  return s;
}

std::string to_text(const Schedule& schedule) {
  std::ostringstream out;
  out << "p2bw-schedule " << kFormatVersion << "\n"
      << "kind " << to_string(schedule.kind) << "\n"
      << "stages " << schedule.stages << "\n"
      << "microbatches " << schedule.microbatches << "\n"
      << "batches " << schedule.batches << "\n"
      << "sync_warmup " << schedule.sync_warmup << "\n"
      << "first_batch " << schedule.first_batch << "\n";
  for (size_t s = 0; s < schedule.actions.size(); ++s) {
    out << "\nstage " << s << "\n";
    for (const Action& a : schedule.actions[s]) out << to_string(a) << "\n";
  }
  return out.str();
}

Schedule from_text(const std::string& text) {
  // Header fields; all but the last (first_batch, 0 when absent) are required.
  static const char* const kFields[] = {"kind",    "stages",      "microbatches",
                                        "batches", "sync_warmup", "first_batch"};
  constexpr int kFieldCount = 6;
  constexpr int kRequired = 5;
  Schedule schedule;
  bool have_version = false;
  bool have_field[kFieldCount] = {false, false, false, false, false, false};
  int* const numbers[] = {nullptr,           &schedule.stages,      &schedule.microbatches,
                          &schedule.batches, &schedule.sync_warmup, &schedule.first_batch};
  int stage = -1;
  int line_number = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    const std::vector<std::string> tok = tokenize(line);
    if (tok.empty()) continue;
    if (!have_version) {
      if (tok.size() != 2 || tok[0] != "p2bw-schedule") {
        fail(line_number, "not a p2bw schedule (expected 'p2bw-schedule 1' first)");
      }
      const int version = parse_number(tok[1], "", line_number);
      if (version != kFormatVersion) {
        fail(line_number, "unsupported format version " + std::to_string(version) +
                              " (this reader knows " + std::to_string(kFormatVersion) + ")");
      }
      have_version = true;
      continue;
    }
    if (tok[0] == "stage") {
      if (tok.size() != 2) fail(line_number, "expected 'stage <index>'");
      if (stage < 0) {
        for (int f = 0; f < kRequired; ++f) {
          if (!have_field[f]) {
            fail(line_number, std::string("missing header field '") + kFields[f] + "'");
          }
        }
        if (schedule.stages < 1 || schedule.microbatches < 1 || schedule.batches < 1 ||
            schedule.sync_warmup > schedule.batches || schedule.first_batch >= schedule.batches) {
          fail(line_number,
               "header needs stages, microbatches, batches >= 1, sync_warmup <= batches and "
               "first_batch < batches");
        }
        schedule.actions.resize(schedule.stages);
      }
      const int index = parse_number(tok[1], "", line_number);
      if (index >= schedule.stages) {
        fail(line_number, "stage " + std::to_string(index) + " does not exist (stages 0.." +
                              std::to_string(schedule.stages - 1) + ")");
      }
      if (index != stage + 1) {
        fail(line_number,
             "expected 'stage " + std::to_string(stage + 1) + "' (stages come in order)");
      }
      stage = index;
      continue;
    }
    if (stage >= 0) {
      schedule.actions[stage].push_back(parse_action(tok, line_number));
      continue;
    }
    int field = 0;
    while (field < kFieldCount && tok[0] != kFields[field]) ++field;
    if (field == kFieldCount) fail(line_number, "unknown header field '" + tok[0] + "'");
    if (tok.size() != 2) fail(line_number, "expected '" + tok[0] + " <value>'");
    if (have_field[field]) fail(line_number, "header field '" + tok[0] + "' given twice");
    have_field[field] = true;
    if (field == 0) {
      try {
        schedule.kind = parse_kind(tok[1]);
      } catch (const ScheduleError& e) {
        fail(line_number, e.what());
      }
    } else {
      *numbers[field] = parse_number(tok[1], "", line_number);
    }
  }
  if (!have_version) {
    fail(std::max(line_number, 1), "empty schedule text (expected 'p2bw-schedule 1')");
  }
  if (stage + 1 < schedule.stages || stage < 0) {
    fail(line_number, "text ends before 'stage " + std::to_string(stage + 1) + "'");
  }
  return schedule;
}

std::string action_kind_names() {
  std::string names;
  for (int k = 0; k <= static_cast<int>(ActionKind::batch_end); ++k) {
    Action action;
    action.kind = static_cast<ActionKind>(k);
    const std::string text = to_string(action);
    names += (k ? "," : "") + text.substr(0, text.find(' '));
  }
  return names;
}

}  // namespace p2bw::schedule
