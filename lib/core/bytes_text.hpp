// Byte counts as people read them ("1.50 MiB"), for every message and summary that shows one.
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <string>

namespace p2bw {

inline std::string bytes_text(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (std::abs(bytes) >= 1024 && u < 6) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[u]);
}

}  // namespace p2bw
