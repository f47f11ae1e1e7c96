// FNV-1a (64-bit) over bytes: the same value on every platform, for tensor random streams and
// checkpoint checksums.
#pragma once

#include <cstddef>
#include <cstdint>

namespace p2bw {

// `hash` continues a running hash (of the bytes before these), for data read in pieces.
inline std::uint64_t fnv1a64(const void* data, std::size_t bytes,
                             std::uint64_t hash = 14695981039346656037ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * 1099511628211ULL;
  return hash;
}

}  // namespace p2bw
