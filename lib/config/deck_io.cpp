// Deck schema, YAML parsing with line numbers, --set overrides, validation and the resolved echo.
// One table (specs()) drives parsing, defaults, the echo and the deck reference.
#include "config/deck_io.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "core/error.hpp"

namespace p2bw::config {

const char* to_string(ModelKind kind) {
  return kind == ModelKind::gpt ? "gpt" : "bert";
}
const char* to_string(OptimizerKind kind) {
  return kind == OptimizerKind::adamw ? "adamw" : "sgd";
}
const char* to_string(LrDecay decay) {
  switch (decay) {
    case LrDecay::cosine:
      return "cosine";
    case LrDecay::linear:
      return "linear";
    case LrDecay::constant:
      return "constant";
  }
  return "?";
}
const char* to_string(DataFormat format) {
  switch (format) {
    case DataFormat::text:
      return "text";
    case DataFormat::tokens:
      return "tokens";
    case DataFormat::llmc:
      return "llmc";
  }
  return "?";
}
const char* to_string(TransportKind kind) {
  switch (kind) {
    case TransportKind::automatic:
      return "auto";
    case TransportKind::nccl:
      return "nccl";
    case TransportKind::mpi:
      return "mpi";
  }
  return "?";
}

const char* to_string(Precision precision) {
  switch (precision) {
    case Precision::fp32:
      return "fp32";
    case Precision::tf32:
      return "tf32";
    case Precision::bf16:
      return "bf16";
  }
  return "?";
}

std::string where_set(const Deck& deck, const std::string& key) {
  const auto it = deck.set_at.find(key);
  return it != deck.set_at.end() ? it->second : deck.source;
}

namespace {

namespace fs = std::filesystem;

// Where a value came from: "deck.yaml:12" or "--set 'model.heads=7'".
struct Where {
  std::string text;
  std::string base_dir;  // relative paths given here resolve against this folder
};

[[noreturn]] void fail(const Where& where, const std::string& key, const std::string& what,
                       const std::string& allowed) {
  std::string message = where.text + ": " + key + ": " + what;
  if (!allowed.empty()) message += " (allowed: " + allowed + ")";
  throw UserError(message);
}

Where at(const std::string& source, const YAML::Node& node, const std::string& base_dir) {
  const int line = node.Mark().line;
  return {line >= 0 ? fmt::format("{}:{}", source, line + 1) : source, base_dir};
}

enum class Type { integer, number, boolean, string, choice, int_list };

const char* type_name(Type type) {
  switch (type) {
    case Type::integer:
      return "integer";
    case Type::number:
      return "number";
    case Type::boolean:
      return "boolean";
    case Type::string:
      return "string";
    case Type::choice:
      return "choice";
    case Type::int_list:
      return "list of integers";
  }
  return "?";
}

struct Spec {
  std::string path;
  Type type;
  std::string allowed;  // what the error messages and the reference print
  std::string help;
  bool required = false;
  std::function<void(Deck&, const YAML::Node&, const Where&)> read;
  std::function<std::string(const Deck&)> write;  // scalar text; int_list handled by write_list
  std::function<std::vector<int>(const Deck&)> write_list;
};

std::string describe(const YAML::Node& node) {
  if (node.IsMap()) return "a map";
  if (node.IsSequence()) return "a list";
  if (node.IsNull()) return "nothing";
  return "'" + node.Scalar() + "'";
}

const std::string& scalar(const Spec& spec, const YAML::Node& node, const Where& where) {
  if (!node.IsScalar())
    fail(where, spec.path,
         "expected " + std::string(type_name(spec.type)) + ", got " + describe(node), spec.allowed);
  return node.Scalar();
}

std::optional<long long> to_integer(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return std::nullopt;
  return value;
}

std::optional<double> to_number(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (errno != 0 || *end != '\0' || !std::isfinite(value)) return std::nullopt;
  return value;
}

std::string format_number(double value) {
  return fmt::format("{}", value);
}

template <class Int>
Spec integer_key(std::string path, Int& (*field)(Deck&), long long lo, long long hi,
                 std::string help, bool required = false) {
  Spec spec;
  spec.path = std::move(path);
  spec.type = Type::integer;
  spec.allowed = hi == std::numeric_limits<long long>::max()
                     ? fmt::format("an integer >= {}", lo)
                     : fmt::format("an integer {} .. {}", lo, hi);
  spec.help = std::move(help);
  spec.required = required;
  spec.read = [field, lo, hi, spec](Deck& deck, const YAML::Node& node, const Where& where) {
    const std::string& text = scalar(spec, node, where);
    const auto value = to_integer(text);
    if (!value) fail(where, spec.path, "expected an integer, got '" + text + "'", spec.allowed);
    if (*value < lo || *value > hi)
      fail(where, spec.path, fmt::format("{} is out of range", *value), spec.allowed);
    field(deck) = static_cast<Int>(*value);
  };
  spec.write = [field](const Deck& deck) {
    return fmt::format("{}", field(const_cast<Deck&>(deck)));
  };
  return spec;
}

// Numbers within [lo, hi]; lo_open excludes lo itself.
Spec number_key(std::string path, double& (*field)(Deck&), double lo, bool lo_open, double hi,
                std::string help) {
  Spec spec;
  spec.path = std::move(path);
  spec.type = Type::number;
  spec.allowed = fmt::format("a number {} {}{}", lo_open ? ">" : ">=", format_number(lo),
                             std::isinf(hi) ? "" : " and <= " + format_number(hi));
  spec.help = std::move(help);
  spec.read = [field, lo, lo_open, hi, spec](Deck& deck, const YAML::Node& node,
                                             const Where& where) {
    const std::string& text = scalar(spec, node, where);
    const auto value = to_number(text);
    if (!value) fail(where, spec.path, "expected a number, got '" + text + "'", spec.allowed);
    if (*value < lo || (lo_open && *value == lo) || *value > hi)
      fail(where, spec.path, text + " is out of range", spec.allowed);
    field(deck) = *value;
  };
  spec.write = [field](const Deck& deck) { return format_number(field(const_cast<Deck&>(deck))); };
  return spec;
}

Spec boolean_key(std::string path, bool& (*field)(Deck&), std::string help) {
  Spec spec;
  spec.path = std::move(path);
  spec.type = Type::boolean;
  spec.allowed = "true or false";
  spec.help = std::move(help);
  spec.read = [field, spec](Deck& deck, const YAML::Node& node, const Where& where) {
    const std::string& text = scalar(spec, node, where);
    if (text == "true" || text == "True")
      field(deck) = true;
    else if (text == "false" || text == "False")
      field(deck) = false;
    else
      fail(where, spec.path, "expected true or false, got '" + text + "'", spec.allowed);
  };
  spec.write = [field](const Deck& deck) {
    return std::string(field(const_cast<Deck&>(deck)) ? "true" : "false");
  };
  return spec;
}

// A path: resolved against the folder of the file (or the working directory for --set).
Spec path_key(std::string path, std::string& (*field)(Deck&), std::string help, bool required) {
  Spec spec;
  spec.path = std::move(path);
  spec.type = Type::string;
  spec.allowed = "a file path, relative to the deck's folder";
  spec.help = std::move(help);
  spec.required = required;
  spec.read = [field, spec](Deck& deck, const YAML::Node& node, const Where& where) {
    const std::string& text = scalar(spec, node, where);
    if (text.empty()) fail(where, spec.path, "is empty", spec.allowed);
    fs::path value(text);
    if (value.is_relative()) value = fs::absolute(fs::path(where.base_dir) / value);
    field(deck) = value.lexically_normal().string();
  };
  spec.write = [field](const Deck& deck) { return field(const_cast<Deck&>(deck)); };
  return spec;
}

template <class Enum>
Spec choice_key(std::string path, Enum& (*field)(Deck&), std::vector<Enum> values,
                std::string help) {
  Spec spec;
  spec.path = std::move(path);
  spec.type = Type::choice;
  std::vector<std::string> names;
  for (Enum value : values) names.push_back(to_string(value));
  spec.allowed = fmt::format("{}", fmt::join(names, " | "));
  spec.help = std::move(help);
  spec.read = [field, values, spec](Deck& deck, const YAML::Node& node, const Where& where) {
    const std::string& text = scalar(spec, node, where);
    for (Enum value : values) {
      if (text == to_string(value)) {
        field(deck) = value;
        return;
      }
    }
    fail(where, spec.path, "'" + text + "' is not a choice", spec.allowed);
  };
  spec.write = [field](const Deck& deck) {
    return std::string(to_string(field(const_cast<Deck&>(deck))));
  };
  return spec;
}

Spec int_list_key(std::string path, std::vector<int>& (*field)(Deck&), std::string help) {
  Spec spec;
  spec.path = std::move(path);
  spec.type = Type::int_list;
  spec.allowed = "a list of positive integers, one per stage, or []";
  spec.help = std::move(help);
  spec.read = [field, spec](Deck& deck, const YAML::Node& node, const Where& where) {
    if (!node.IsSequence())
      fail(where, spec.path, "expected a list, got " + describe(node), spec.allowed);
    std::vector<int> values;
    for (const YAML::Node& item : node) {
      const auto value = item.IsScalar() ? to_integer(item.Scalar()) : std::nullopt;
      if (!value || *value < 1 || *value > std::numeric_limits<int>::max())
        fail(where, spec.path, "entry " + describe(item) + " is not a positive integer",
             spec.allowed);
      values.push_back(static_cast<int>(*value));
    }
    field(deck) = values;
  };
  spec.write_list = [field](const Deck& deck) { return field(const_cast<Deck&>(deck)); };
  return spec;
}

constexpr long long kBig = std::numeric_limits<int>::max();
constexpr long long kHuge = std::numeric_limits<long long>::max();
constexpr double kInf = std::numeric_limits<double>::infinity();

// The deck reference: every key, in the order the echo prints them.
const std::vector<Spec>& specs() {
  static const std::vector<Spec> table = {
      choice_key(
          "model.kind", +[](Deck& d) -> ModelKind& { return d.model.kind; },
          {ModelKind::gpt, ModelKind::bert},
          "gpt: causal decoder, next-token loss; bert: bidirectional encoder, masked-LM loss"),
      integer_key(
          "model.layers", +[](Deck& d) -> int& { return d.model.layers; }, 1, 100000,
          "transformer blocks", true),
      integer_key(
          "model.hidden", +[](Deck& d) -> int& { return d.model.hidden; }, 1, 1 << 20,
          "hidden size C", true),
      integer_key(
          "model.heads", +[](Deck& d) -> int& { return d.model.heads; }, 1, 1 << 16,
          "attention heads; must divide model.hidden", true),
      integer_key(
          "model.seq_len", +[](Deck& d) -> int& { return d.model.seq_len; }, 1, 1 << 20,
          "sequence length T", true),
      integer_key(
          "model.vocab", +[](Deck& d) -> int& { return d.model.vocab; }, 2, 1 << 24,
          "vocabulary size V (the byte tokenizer needs 256, BERT one more for its mask token); "
          "padded to a multiple of 64 internally"),
      choice_key(
          "model.precision", +[](Deck& d) -> Precision& { return d.model.precision; },
          {Precision::fp32, Precision::tf32, Precision::bf16},
          "fp32; tf32 = fp32 storage, TF32 tensor-core GEMMs (CUDA builds); bf16 = activations "
          "and compute copies of the weights in bf16, fp32 master weights, optimizer state and "
          "gradient reduction, fp32 accumulation in every GEMM"),
      integer_key(
          "pipeline.depth", +[](Deck& d) -> int& { return d.pipeline.depth; }, 1, 4096,
          "d: pipeline stages"),
      integer_key(
          "pipeline.width", +[](Deck& d) -> int& { return d.pipeline.width; }, 1, 1 << 20,
          "w: data-parallel replicas of every stage; the run needs d·w MPI ranks"),
      choice_key(
          "pipeline.schedule", +[](Deck& d) -> ScheduleKind& { return d.pipeline.schedule; },
          {ScheduleKind::gpipe, ScheduleKind::flush, ScheduleKind::two_bw},
          "gpipe | flush (1F1B, vanilla semantics) | 2bw (1F1B without flushes, two weight "
          "versions)"),
      integer_key(
          "pipeline.microbatches", +[](Deck& d) -> int& { return d.pipeline.microbatches; }, 1,
          kBig, "m: microbatches per batch per pipeline; default 2·d; 2bw needs m >= d"),
      boolean_key(
          "pipeline.recompute", +[](Deck& d) -> bool& { return d.pipeline.recompute; },
          "stash only stage inputs and recompute activations in backward"),
      int_list_key(
          "pipeline.partition", +[](Deck& d) -> std::vector<int>& { return d.pipeline.partition; },
          "blocks per stage (d entries summing to model.layers); [] balances automatically"),
      integer_key(
          "pipeline.sync_warmup_steps",
          +[](Deck& d) -> int& { return d.pipeline.sync_warmup_steps; }, 0, kBig,
          "2bw: the first K optimizer steps use flush semantics, then 2bw; 0 = the paper's 2bw "
          "from step 0; ignored by flush and gpipe; the default is measured (docs/convergence.md)"),
      number_key(
          "pipeline.weight_prediction",
          +[](Deck& d) -> double& { return d.pipeline.weight_prediction; }, 0, false, 2,
          "2bw: gamma of the weight prediction; after the warm-up, a batch runs on W(t) + "
          "gamma (W(t) - W(t-1)) instead of the stale W(t); 0 = the paper's 2bw; costs one more "
          "weight copy per stage; ignored by flush and gpipe (docs/convergence.md)"),
      number_key(
          "pipeline.timeout_s", +[](Deck& d) -> double& { return d.pipeline.timeout_s; }, 0, true,
          kInf,
          "seconds a rank may wait on a peer before the run fails with a message naming both"),
      choice_key(
          "pipeline.transport", +[](Deck& d) -> TransportKind& { return d.pipeline.transport; },
          {TransportKind::automatic, TransportKind::nccl, TransportKind::mpi},
          "activations and reductions: auto = NCCL when every rank has a GPU of its own (and the "
          "build has NCCL), else MPI through host memory; nccl refuses to run otherwise"),
      integer_key(
          "train.microbatch_size", +[](Deck& d) -> int& { return d.train.microbatch_size; }, 1,
          kBig, "b: sequences per microbatch"),
      integer_key(
          "train.steps", +[](Deck& d) -> std::int64_t& { return d.train.steps; }, 1, kBig,
          "optimizer steps (one per global batch of b·m·w sequences)", true),
      integer_key(
          "train.seed", +[](Deck& d) -> std::uint64_t& { return d.train.seed; }, 0, kHuge,
          "seed of initialisation, data order and masking"),
      choice_key(
          "train.optimizer.kind", +[](Deck& d) -> OptimizerKind& { return d.train.optimizer.kind; },
          {OptimizerKind::adamw, OptimizerKind::sgd}, "adamw | sgd (with momentum)"),
      number_key(
          "train.optimizer.beta1", +[](Deck& d) -> double& { return d.train.optimizer.beta1; }, 0,
          false, 1, "AdamW first-moment decay"),
      number_key(
          "train.optimizer.beta2", +[](Deck& d) -> double& { return d.train.optimizer.beta2; }, 0,
          false, 1, "AdamW second-moment decay"),
      number_key(
          "train.optimizer.eps", +[](Deck& d) -> double& { return d.train.optimizer.eps; }, 0, true,
          1, "AdamW epsilon"),
      number_key(
          "train.optimizer.weight_decay",
          +[](Deck& d) -> double& { return d.train.optimizer.weight_decay; }, 0, false, kInf,
          "decoupled weight decay (never on LayerNorm parameters and biases)"),
      number_key(
          "train.optimizer.momentum",
          +[](Deck& d) -> double& { return d.train.optimizer.momentum; }, 0, false, 1,
          "SGD momentum"),
      number_key(
          "train.lr", +[](Deck& d) -> double& { return d.train.lr; }, 0, true, kInf,
          "peak learning rate"),
      integer_key(
          "train.lr_warmup_steps",
          +[](Deck& d) -> std::int64_t& { return d.train.lr_warmup_steps; }, 0, kBig,
          "linear warm-up steps from 0 to train.lr"),
      choice_key(
          "train.lr_decay", +[](Deck& d) -> LrDecay& { return d.train.lr_decay; },
          {LrDecay::cosine, LrDecay::linear, LrDecay::constant},
          "decay after warm-up, reaching train.lr_min at the last step"),
      number_key(
          "train.lr_min", +[](Deck& d) -> double& { return d.train.lr_min; }, 0, false, kInf,
          "learning rate at the last step; <= train.lr"),
      number_key(
          "train.grad_clip", +[](Deck& d) -> double& { return d.train.grad_clip; }, 0, false, kInf,
          "global gradient-norm clip; 0 disables"),
      integer_key(
          "train.log_every", +[](Deck& d) -> int& { return d.train.log_every; }, 1, kBig,
          "steps between log lines"),
      integer_key(
          "train.eval_every", +[](Deck& d) -> int& { return d.train.eval_every; }, 0, kBig,
          "steps between validation-loss evaluations (needs data.val_fraction > 0); 0 = only "
          "after the last step"),
      integer_key(
          "train.eval_batches", +[](Deck& d) -> int& { return d.train.eval_batches; }, 1, kBig,
          "global batches (b·m·w sequences) of the validation split per evaluation; the same "
          "sequences every time"),
      path_key(
          "data.path", +[](Deck& d) -> std::string& { return d.data.path; },
          "training data file; relative to the deck's folder", true),
      choice_key(
          "data.format", +[](Deck& d) -> DataFormat& { return d.data.format; },
          {DataFormat::text, DataFormat::tokens, DataFormat::llmc},
          "text: UTF-8 bytes; tokens: a p2bw token file (p2bw prepare-data); llmc: llm.c .bin "
          "GPT-2 token shard"),
      number_key(
          "data.val_fraction", +[](Deck& d) -> double& { return d.data.val_fraction; }, 0, false,
          0.5,
          "the last fraction of data.path held out as the validation split (never trained on); "
          "0 = no validation"),
      path_key(
          "output.dir", +[](Deck& d) -> std::string& { return d.output.dir; },
          "output folder; relative to the deck's folder; default runs/<deck name> in the working "
          "directory",
          false),
      boolean_key(
          "output.trace", +[](Deck& d) -> bool& { return d.output.trace; },
          "record every executed action per rank"),
      integer_key(
          "checkpoint.every", +[](Deck& d) -> int& { return d.checkpoint.every; }, 0, kBig,
          "steps between checkpoints; 0 = only at the end"),
      integer_key(
          "checkpoint.keep", +[](Deck& d) -> int& { return d.checkpoint.keep; }, 1, kBig,
          "most recent checkpoints kept"),
  };
  return table;
}

const Spec* find_spec(const std::string& path) {
  for (const Spec& spec : specs())
    if (spec.path == path) return &spec;
  return nullptr;
}

bool is_section(const std::string& path) {
  for (const Spec& spec : specs())
    if (spec.path.compare(0, path.size() + 1, path + ".") == 0) return true;
  return false;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t next = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = row[j];
      row[j] = next;
    }
  }
  return row[b.size()];
}

std::string last_part(const std::string& path) {
  return path.substr(path.rfind('.') + 1);
}

// The known key (or section) closest to an unknown one, if any is close.
std::string did_you_mean(const std::string& unknown) {
  std::vector<std::string> known;
  for (const Spec& spec : specs()) {
    known.push_back(spec.path);
    for (size_t dot = spec.path.find('.'); dot != std::string::npos;
         dot = spec.path.find('.', dot + 1))
      known.push_back(spec.path.substr(0, dot));
  }
  std::string best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const std::string& candidate : known) {
    // The same key under another section (train.depth -> pipeline.depth) is a strong match.
    size_t distance = edit_distance(unknown, candidate);
    if (last_part(candidate) == last_part(unknown)) distance = std::min<size_t>(distance, 1);
    if (distance < best_distance) {
      best_distance = distance;
      best = candidate;
    }
  }
  const size_t limit = std::max<size_t>(2, last_part(unknown).size() / 3);
  return best_distance <= limit ? best : "";
}

std::string keys_under(const std::string& section) {
  std::vector<std::string> names;
  for (const Spec& spec : specs()) {
    if (section.empty() || spec.path.compare(0, section.size() + 1, section + ".") == 0) {
      std::string rest = spec.path.substr(section.empty() ? 0 : section.size() + 1);
      rest = rest.substr(0, rest.find('.'));
      if (std::find(names.begin(), names.end(), rest) == names.end()) names.push_back(rest);
    }
  }
  return fmt::format("{}", fmt::join(names, ", "));
}

// Keys of earlier p2bw versions and what replaced them. A deck a user gives that still has one
// is refused with the replacement (one line, exit 2); a deck that an earlier p2bw wrote (a
// checkpoint's echo, LoadOptions::earlier_keys) is translated, so its runs stay readable.
struct RetiredKey {
  const char* path;
  const char* replacement;  // what to write instead, for the message
  const char* allowed;
  void (*translate)(Deck& deck, const std::string& value);
};

const std::vector<RetiredKey>& retired_keys() {
  static const std::vector<RetiredKey> keys = {
      {"train.tf32", "was replaced by model.precision (train.tf32: true is model.precision: tf32)",
       "model.precision: fp32 | tf32 | bf16",
       [](Deck& deck, const std::string& value) {
         if (value == "true" || value == "True") deck.model.precision = Precision::tf32;
       }},
  };
  return keys;
}

const RetiredKey* find_retired(const std::string& path) {
  for (const RetiredKey& key : retired_keys())
    if (path == key.path) return &key;
  return nullptr;
}

// Everything parse_deck learns besides the values: where each key was set.
struct Origins {
  std::string source;
  bool earlier_keys = false;           // translate retired keys (LoadOptions::earlier_keys)
  std::map<std::string, Where> where;  // key -> where it was set (absent: default)
  std::map<std::string, Where> sections;

  // Where to point a message about `keys`: the first of them set explicitly.
  Where locate(std::initializer_list<const char*> keys) const {
    for (const char* key : keys) {
      auto it = where.find(key);
      if (it != where.end()) return it->second;
    }
    for (const char* key : keys) {
      const std::string section = std::string(key).substr(0, std::string(key).find('.'));
      auto it = sections.find(section);
      if (it != sections.end()) return it->second;
    }
    return {source, ""};
  }
};

void read_map(Deck& deck, const YAML::Node& map, const std::string& prefix, Origins& origins,
              const std::string& base_dir) {
  std::set<std::string> seen;
  for (const auto& item : map) {
    const YAML::Node& key_node = item.first;
    const Where where = at(origins.source, key_node, base_dir);
    if (!key_node.IsScalar())
      fail(where, prefix.empty() ? "(top level)" : prefix, "keys must be plain names",
           keys_under(prefix));
    const std::string path = prefix.empty() ? key_node.Scalar() : prefix + "." + key_node.Scalar();
    if (!seen.insert(path).second) fail(where, path, "is given twice", "each key once");
    if (const Spec* spec = find_spec(path)) {
      spec->read(deck, item.second, where);
      origins.where[path] = where;
    } else if (const RetiredKey* retired = find_retired(path)) {
      if (!origins.earlier_keys) fail(where, path, retired->replacement, retired->allowed);
      if (item.second.IsScalar()) retired->translate(deck, item.second.Scalar());
    } else if (is_section(path)) {
      origins.sections[path] = where;
      if (item.second.IsNull()) continue;  // an empty section: all defaults
      if (!item.second.IsMap())
        fail(where, path, "is a section and needs keys, got " + describe(item.second),
             keys_under(path));
      read_map(deck, item.second, path, origins, base_dir);
    } else {
      const std::string suggestion = did_you_mean(path);
      fail(where, path,
           "unknown key" + (suggestion.empty() ? "" : "; did you mean '" + suggestion + "'?"),
           prefix.empty() ? keys_under("") : keys_under(prefix));
    }
  }
}

void apply_override(Deck& deck, const std::string& text, Origins& origins) {
  const Where where{"--set '" + text + "'", fs::current_path().string()};
  const size_t equals = text.find('=');
  if (equals == std::string::npos || equals == 0)
    fail(where, text, "expected key.path=value", "e.g. --set pipeline.depth=4");
  const std::string path = text.substr(0, equals);
  if (const RetiredKey* retired = find_retired(path))
    fail(where, path, retired->replacement, retired->allowed);
  const Spec* spec = find_spec(path);
  if (!spec) {
    const std::string suggestion = did_you_mean(path);
    fail(where, path,
         "unknown key" + (suggestion.empty() ? "" : "; did you mean '" + suggestion + "'?"),
         "a key of the deck reference (p2bw check --keys)");
  }
  YAML::Node value;
  try {
    value = YAML::Load(text.substr(equals + 1));
  } catch (const YAML::Exception& error) {
    fail(where, path, "value is not valid YAML: " + error.msg, spec->allowed);
  }
  spec->read(deck, value, where);
  origins.where[path] = where;
}

bool given(const Origins& origins, const char* key) {
  return origins.where.count(key) != 0;
}

void validate(Deck& deck, const Origins& origins, const LoadOptions& options) {
  for (const Spec& spec : specs()) {
    if (spec.required && !given(origins, spec.path.c_str()))
      fail(origins.locate({spec.path.c_str()}), spec.path, "is required but missing", spec.allowed);
  }
  const ModelConfig& model = deck.model;
  PipelineConfig& pipe = deck.pipeline;
  if (model.hidden % model.heads != 0)
    fail(origins.locate({"model.heads", "model.hidden"}), "model.heads",
         fmt::format("{} does not divide model.hidden = {}", model.heads, model.hidden),
         "a divisor of model.hidden");
  if (pipe.depth > model.layers)
    fail(origins.locate({"pipeline.depth", "model.layers"}), "pipeline.depth",
         fmt::format("{} stages for {} layers", pipe.depth, model.layers),
         fmt::format("1 .. model.layers = {}", model.layers));
  if (!given(origins, "pipeline.microbatches")) pipe.microbatches = 2 * pipe.depth;
  // Only 2bw has a warm-up; a value given for another schedule stays inert, so that switching
  // schedules is a one-key change. The default is measured (docs/convergence.md).
  if (!given(origins, "pipeline.sync_warmup_steps"))
    pipe.sync_warmup_steps =
        pipe.schedule == ScheduleKind::two_bw ? default_sync_warmup_steps(deck.train.steps) : 0;
  if (pipe.schedule == ScheduleKind::two_bw && pipe.microbatches < pipe.depth)
    fail(origins.locate({"pipeline.microbatches", "pipeline.depth", "pipeline.schedule"}),
         "pipeline.microbatches",
         fmt::format("2bw needs m >= d, got m = {} < d = {}", pipe.microbatches, pipe.depth),
         fmt::format("an integer >= pipeline.depth = {}", pipe.depth));
  if (!pipe.partition.empty()) {
    const Where where = origins.locate({"pipeline.partition"});
    if (static_cast<int>(pipe.partition.size()) != pipe.depth)
      fail(where, "pipeline.partition",
           fmt::format("has {} entries for {} stages", pipe.partition.size(), pipe.depth),
           fmt::format("pipeline.depth = {} entries", pipe.depth));
    long long sum = 0;
    for (int blocks : pipe.partition) sum += blocks;
    if (sum != model.layers)
      fail(where, "pipeline.partition",
           fmt::format("sums to {} blocks, the model has {}", sum, model.layers),
           fmt::format("entries summing to model.layers = {}", model.layers));
  }
  // Every size p2bw computes (parameters, activations, the bytes `check` prints) is a 64-bit
  // integer: a conservative bound of the largest, in long double, keeps them all far from
  // overflowing (and a sequence of a microbatch within the kernels' 32-bit extents).
  {
    using Big = long double;
    const Big b = deck.train.microbatch_size, T = model.seq_len, C = model.hidden, H = model.heads,
              L = model.layers, V = static_cast<Big>(padded_vocab(model.vocab)),
              m = pipe.microbatches;
    const Big params = L * (12 * C * C + 13 * C) + 2 * V * C + T * C + 2 * C;
    const Big block = 16 * b * T * C + 4 * b * T + b * H * T * T, head = b * T * (2 * C + 2 + V);
    const Big bound = 20 * params + 4 * (m + 2) * (L * block + head + b * T) + 64 * (block + head);
    constexpr Big kLimit = static_cast<Big>(std::int64_t{1} << 60);
    if (b * T > static_cast<Big>(std::numeric_limits<int>::max()))
      fail(origins.locate({"train.microbatch_size", "model.seq_len"}), "train.microbatch_size",
           fmt::format("{} sequences of model.seq_len = {} are {} tokens per microbatch",
                       deck.train.microbatch_size, model.seq_len, static_cast<long long>(b * T)),
           fmt::format("at most {} tokens per microbatch", std::numeric_limits<int>::max()));
    constexpr Big kInt = std::numeric_limits<int>::max();
    if (b * T * C > kInt)  // a stage boundary's activations go out in one 32-bit-counted message
      fail(origins.locate({"train.microbatch_size", "model.seq_len", "model.hidden"}),
           "train.microbatch_size",
           fmt::format("b·T·C = {}·{}·{} floats per stage boundary message exceed 32-bit counts",
                       deck.train.microbatch_size, model.seq_len, model.hidden),
           fmt::format("b·T·C <= {}", std::numeric_limits<int>::max()));
    // The schedule numbers the microbatches of the whole run with 32-bit integers.
    if (static_cast<Big>(deck.train.steps) * m > kInt)
      fail(origins.locate({"train.steps", "pipeline.microbatches"}), "train.steps",
           fmt::format("{} steps of {} microbatches are more microbatches than 32-bit counts hold",
                       deck.train.steps, pipe.microbatches),
           fmt::format("train.steps · pipeline.microbatches <= {}",
                       std::numeric_limits<int>::max()));
    if (bound > kLimit)
      fail(origins.locate({"model.layers", "model.hidden", "model.seq_len", "model.vocab",
                           "train.microbatch_size", "pipeline.microbatches"}),
           "model",
           fmt::format("the model's memory is beyond 2^60 bytes (about {:.3g} bytes), more than "
                       "64-bit byte counts can hold",
                       static_cast<double>(bound)),
           "smaller model.layers, model.hidden, model.seq_len, train.microbatch_size or "
           "pipeline.microbatches");
  }
  if (deck.train.lr_min > deck.train.lr)
    fail(origins.locate({"train.lr_min", "train.lr"}), "train.lr_min",
         fmt::format("{} is above train.lr = {}", format_number(deck.train.lr_min),
                     format_number(deck.train.lr)),
         "a number between 0 and train.lr");
  if (deck.train.eval_every > 0 && deck.data.val_fraction == 0)
    fail(origins.locate({"train.eval_every", "data.val_fraction"}), "train.eval_every",
         fmt::format("evaluates every {} steps, but data.val_fraction = 0 holds nothing out",
                     deck.train.eval_every),
         "0, or data.val_fraction > 0");
  if (deck.data.format == DataFormat::text) {
    const int needed = model.kind == ModelKind::bert ? 257 : 256;
    if (model.vocab < needed)
      fail(origins.locate({"model.vocab", "data.format"}), "model.vocab",
           fmt::format("{} is too small for byte-level text{}", model.vocab,
                       model.kind == ModelKind::bert ? " plus BERT's mask token" : ""),
           fmt::format("an integer >= {} with data.format: text", needed));
  }
  if (options.require_data) {
    std::error_code error;
    if (!fs::is_regular_file(deck.data.path, error))
      fail(origins.locate({"data.path"}), "data.path", "no such file: " + deck.data.path,
           "an existing file (scripts/demo prepares data/)");
  }
  if (options.world_size > 0 && options.world_size != pipe.depth * pipe.width)
    fail(origins.locate({"pipeline.width", "pipeline.depth"}), "pipeline.depth",
         fmt::format("d·w = {}·{} = {} ranks, but the run has {} MPI ranks", pipe.depth, pipe.width,
                     pipe.depth * pipe.width, options.world_size),
         fmt::format("launch with {} ranks, e.g. mpiexec -n {}", pipe.depth * pipe.width,
                     pipe.depth * pipe.width));
  if (deck.output.dir.empty())
    deck.output.dir =
        (fs::current_path() / "runs" / fs::path(origins.source).stem()).lexically_normal().string();
}

}  // namespace

Deck parse_deck(const std::string& yaml_text, const std::string& source,
                const std::string& base_dir, const LoadOptions& options) {
  Origins origins;
  origins.source = source;
  origins.earlier_keys = options.earlier_keys;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& error) {
    throw UserError(fmt::format("{}:{}: invalid YAML: {}", source, error.mark.line + 1, error.msg));
  }
  Deck deck;
  deck.source = source;
  if (!root.IsMap())
    fail({source, ""}, "(top level)",
         "the deck must be a YAML map of sections, got " + describe(root), keys_under(""));
  read_map(deck, root, "", origins, base_dir);
  for (const std::string& text : options.overrides) apply_override(deck, text, origins);
  validate(deck, origins, options);
  for (const auto& [key, where] : origins.where) deck.set_at[key] = where.text;
  return deck;
}

Deck load_deck(const std::string& path, const LoadOptions& options) {
  std::ifstream file(path);
  if (!file) throw UserError(path + ": cannot read the deck file (allowed: a readable YAML file)");
  std::stringstream text;
  text << file.rdbuf();
  const std::string base_dir = fs::absolute(fs::path(path)).parent_path().string();
  return parse_deck(text.str(), path, base_dir, options);
}

std::string to_yaml(const Deck& deck) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::vector<std::string> open;  // sections currently open
  for (const Spec& spec : specs()) {
    std::vector<std::string> parts;
    std::stringstream path(spec.path);
    for (std::string part; std::getline(path, part, '.');) parts.push_back(part);
    const std::vector<std::string> sections(parts.begin(), parts.end() - 1);
    size_t common = 0;
    while (common < open.size() && common < sections.size() && open[common] == sections[common])
      ++common;
    while (open.size() > common) {
      out << YAML::EndMap;
      open.pop_back();
    }
    for (size_t i = common; i < sections.size(); ++i) {
      out << YAML::Key << sections[i] << YAML::Value << YAML::BeginMap;
      open.push_back(sections[i]);
    }
    out << YAML::Key << parts.back() << YAML::Value;
    if (spec.write_list) {
      out << YAML::Flow << YAML::BeginSeq;
      for (int value : spec.write_list(deck)) out << value;
      out << YAML::EndSeq;
    } else {
      out << spec.write(deck);
    }
  }
  while (!open.empty()) {
    out << YAML::EndMap;
    open.pop_back();
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<KeyInfo> deck_keys() {
  const Deck defaults;
  std::vector<KeyInfo> keys;
  for (const Spec& spec : specs()) {
    std::string fallback = spec.required ? "required" : "";
    if (!spec.required) {
      if (spec.write_list)
        fallback = "[]";
      else
        fallback = spec.write(defaults);
      if (spec.path == "pipeline.microbatches") fallback = "2·pipeline.depth";
      if (spec.path == "pipeline.sync_warmup_steps") fallback = "min(1000, ⌈train.steps/2⌉)";
      if (spec.path == "output.dir") fallback = "runs/<deck name>";
    }
    keys.push_back({spec.path, type_name(spec.type), spec.allowed, fallback, spec.help});
  }
  return keys;
}

}  // namespace p2bw::config
