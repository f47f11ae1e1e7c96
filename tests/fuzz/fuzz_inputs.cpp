// libFuzzer target for the readers of bytes a user hands p2bw: the deck parser (with the
// resolved echo parsed back), the token-file reader (p2bw tokens, llm.c shards, text) and the
// checkpoint reader (a valid checkpoint whose manifest and stage attributes and `latest` pointer
// the input rewrites). The first byte picks the reader (mod 3). Contract: each input is accepted
// or refused with a UserError of one printable line; anything else (another exception, a crash,
// a sanitizer report) is a finding. Built with clang -fsanitize=fuzzer by tests/CMakeLists.txt.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "config/deck_io.hpp"
#include "core/error.hpp"
#include "data/token_file.hpp"
#include "io/checkpoint.hpp"
#include "io/hdf5_file.hpp"

namespace {

namespace fs = std::filesystem;
using namespace p2bw;

const fs::path& scratch() {
  static const fs::path dir = [] {
    const fs::path d = fs::temp_directory_path() / ("p2bw-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

void fuzz_deck(const std::string& text) {
  config::LoadOptions options;
  options.require_data = false;
  const config::Deck deck = config::parse_deck(text, "fuzz.yaml", scratch().string(), options);
  // What p2bw writes as deck.yaml must read back to the same deck.
  const std::string echo = config::to_yaml(deck);
  const config::Deck again = config::parse_deck(echo, "deck.yaml", scratch().string(), options);
  if (config::to_yaml(again) != echo) std::abort();
}

void fuzz_tokens(const std::string& bytes) {
  const fs::path path = scratch() / "tokens.bin";
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  for (auto format :
       {config::DataFormat::tokens, config::DataFormat::llmc, config::DataFormat::text}) {
    try {
      const data::Tokens tokens = data::load_tokens(path.string(), format);
      for (std::int32_t id : tokens.ids)
        if (id < 0 || id >= tokens.vocab) std::abort();  // the reader promises ids below vocab
    } catch (const UserError&) {
    }
  }
}

config::Deck checkpoint_deck() {
  config::Deck deck;
  deck.model = {config::ModelKind::gpt, 4, 16, 2, 8, 256};
  deck.train.steps = 100;
  return deck;
}

// A checkpoint of step 3 with two (empty) stage files, written once.
const fs::path& pristine_checkpoints() {
  static const fs::path dir = [] {
    const fs::path d = scratch() / "pristine" / "checkpoints";
    const std::vector<model::TensorInfo> none;
    io::StageTensors data;
    data.tensors = &none;
    for (int stage = 0; stage < 2; ++stage) io::write_stage_file(d.string(), 3, stage, data);
    io::RunState state;
    state.step = 3;
    state.optimizer_steps = 3;
    state.newest_version = 3;
    io::commit_checkpoint(d.string(), 3, checkpoint_deck(), state, 2, 1);
    return d;
  }();
  return dir;
}

// Lines "m:KEY=VALUE" (manifest attribute), "s0:KEY=VALUE" / "s1:..." (stage file attribute),
// "latest=TEXT" (the pointer); an integer VALUE is written as an integer attribute.
void fuzz_checkpoint(const std::string& script) {
  const fs::path& pristine = pristine_checkpoints();
  const fs::path work = scratch() / "work" / "checkpoints";
  fs::remove_all(work.parent_path());
  fs::create_directories(work.parent_path());
  fs::copy(pristine, work, fs::copy_options::recursive);
  std::istringstream lines(script);
  for (std::string line; std::getline(lines, line);) {
    const size_t colon = line.find(':'), equals = line.find('=');
    if (line.rfind("latest=", 0) == 0) {
      std::ofstream(work / "latest", std::ios::binary | std::ios::trunc) << line.substr(7);
      continue;
    }
    if (colon == std::string::npos || equals == std::string::npos || equals < colon) continue;
    const std::string where = line.substr(0, colon),
                      key = line.substr(colon + 1, equals - colon - 1),
                      value = line.substr(equals + 1);
    if (key.empty() || key.find('\0') != std::string::npos) continue;
    const fs::path file = where == "m"    ? work / "step_00000003" / "manifest.h5"
                          : where == "s0" ? work / "step_00000003" / "stage_0.h5"
                          : where == "s1" ? work / "step_00000003" / "stage_1.h5"
                                          : fs::path();
    if (file.empty()) continue;
    io::H5File h5(file.string(), io::H5File::Mode::read_write);
    char* end = nullptr;
    const long long number = std::strtoll(value.c_str(), &end, 10);
    if (!value.empty() && *end == '\0')
      h5.set_attribute("/", key, static_cast<std::int64_t>(number));
    else
      h5.set_attribute("/", key, value);
  }
  const io::CheckpointReader reader(io::resolve_checkpoint(work.string(), "latest"),
                                    checkpoint_deck());
  const io::RunState& s = reader.state();
  // What the reader accepts is what a writer could have written.
  if (s.step < 1 || s.optimizer_steps < 0 || s.optimizer_steps > s.step || s.newest_version < 0 ||
      s.newest_version > s.step || s.old_version < -1 || s.old_version >= s.newest_version)
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 3) {
      case 0:
        fuzz_deck(body);
        break;
      case 1:
        fuzz_tokens(body);
        break;
      default:
        fuzz_checkpoint(body);
        break;
    }
  } catch (const UserError& error) {
    // One printable line (UTF-8 allowed).
    for (const char c : std::string(error.what()))
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) std::abort();
  }
  return 0;
}
