// Checks of Kokkos's options and environment variables; see kokkos_options.hpp.
#include "kokkos_options.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>

namespace p2bw::app {
namespace {

enum class Kind {
  count,    // an integer >= 1 (threads)
  index,    // an integer >= 0 (a device, a NUMA count)
  devices,  // N or N,S (Kokkos 3.4's device count and skipped device)
  list,     // comma-separated integers >= 0 (KOKKOS_VISIBLE_DEVICES)
  boolean,  // yes, true, 1, no, false or 0, in any case
  mapping,  // mpi_rank or random
};

struct Setting {
  const char* option;       // "--kokkos-..." without "=", or nullptr
  const char* environment;  // "KOKKOS_...", or nullptr
  Kind kind;
};

// Kokkos 3.4's options (--kokkos-threads, --kokkos-numa, --kokkos-ndevices) and Kokkos 4's.
constexpr Setting kSettings[] = {
    {"--kokkos-threads", nullptr, Kind::count},
    {"--kokkos-num-threads", "KOKKOS_NUM_THREADS", Kind::count},
    {"--kokkos-numa", nullptr, Kind::index},
    {"--kokkos-device-id", "KOKKOS_DEVICE_ID", Kind::index},
    {"--kokkos-num-devices", nullptr, Kind::devices},
    {"--kokkos-ndevices", nullptr, Kind::devices},
    {nullptr, "KOKKOS_VISIBLE_DEVICES", Kind::list},
    {"--kokkos-disable-warnings", "KOKKOS_DISABLE_WARNINGS", Kind::boolean},
    {"--kokkos-print-configuration", "KOKKOS_PRINT_CONFIGURATION", Kind::boolean},
    {"--kokkos-tune-internals", "KOKKOS_TUNE_INTERNALS", Kind::boolean},
    {"--kokkos-map-device-id-by", "KOKKOS_MAP_DEVICE_ID_BY", Kind::mapping},
};

bool is_integer(const std::string& text) {  // digits only, at most 9 of them (fits an int)
  return !text.empty() && text.size() <= 9 &&
         std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); });
}

bool is_integer_list(const std::string& text, size_t most) {
  size_t items = 0, begin = 0;
  for (;;) {
    const size_t comma = text.find(',', begin);
    if (!is_integer(text.substr(begin, comma - begin)) || ++items > most) return false;
    if (comma == std::string::npos) return true;
    begin = comma + 1;
  }
}

std::string lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

bool allowed(Kind kind, const std::string& value) {
  switch (kind) {
    case Kind::count:
      return is_integer(value) && std::stol(value) >= 1;
    case Kind::index:
      return is_integer(value);
    case Kind::devices:
      return is_integer_list(value, 2);
    case Kind::list:
      return is_integer_list(value, 1 << 20);
    case Kind::boolean: {
      const std::string v = lower(value);
      return v == "yes" || v == "true" || v == "1" || v == "no" || v == "false" || v == "0";
    }
    case Kind::mapping:
      return value == "mpi_rank" || value == "random";
  }
  return false;
}

const char* what_is_allowed(Kind kind) {
  switch (kind) {
    case Kind::count:
      return "an integer >= 1";
    case Kind::index:
      return "an integer >= 0";
    case Kind::devices:
      return "N or N,S with integers >= 0";
    case Kind::list:
      return "integers >= 0, separated by commas";
    case Kind::boolean:
      return "yes, true, 1, no, false or 0, in any case";
    case Kind::mapping:
      return "mpi_rank or random";
  }
  return "?";
}

std::string bad_option(const Setting& setting, const std::string& arg) {
  const std::string name = setting.option;
  if (arg.compare(0, name.size(), name) != 0) return "";
  if (arg.size() == name.size()) {  // only a boolean may go without "=VALUE"
    if (setting.kind == Kind::boolean) return "";
    return fmt::format("{}: needs a value (allowed: {}=N with N {})", arg, name,
                       what_is_allowed(setting.kind));
  }
  if (arg[name.size()] != '=') return "";  // another option that starts the same way
  const std::string value = arg.substr(name.size() + 1);
  if (allowed(setting.kind, value)) return "";
  return fmt::format("{}: '{}' is not allowed (allowed: {})", name, value,
                     what_is_allowed(setting.kind));
}

}  // namespace

std::string bad_kokkos_input(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    for (const Setting& setting : kSettings)
      if (setting.option != nullptr)
        if (std::string bad = bad_option(setting, argv[i]); !bad.empty()) return bad;
  for (const Setting& setting : kSettings) {
    if (setting.environment == nullptr) continue;
    const char* value = std::getenv(setting.environment);
    if (value != nullptr && !allowed(setting.kind, value))
      return fmt::format("environment variable {}: '{}' is not allowed (allowed: {})",
                         setting.environment, value, what_is_allowed(setting.kind));
  }
  return "";
}

}  // namespace p2bw::app
