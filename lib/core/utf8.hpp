// UTF-8 validity, shared by the escaping of messages (core/error.hpp) and the decoding of
// byte-level model output (data/token_file.hpp).
#pragma once

#include <cstddef>
#include <string>

namespace p2bw {

// Length of the printable UTF-8 character starting at text[i]: 1 for printable ASCII, 2..4 for a
// valid multi-byte sequence (no overlong forms, surrogates, code points beyond U+10FFFF or C1
// controls U+0080..U+009F); 0 for anything else (a control character, a stray or cut byte).
inline std::size_t utf8_printable_length(const std::string& text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char c = byte(i);
  if (c >= 0x20 && c < 0x7f) return 1;
  if (c < 0xc2 || c > 0xf4) return 0;
  const std::size_t need = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
  if (i + need > text.size()) return 0;
  for (std::size_t k = 1; k < need; ++k)
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
  if (c == 0xc2 && byte(i + 1) < 0xa0) return 0;   // C1 controls U+0080..U+009F
  if (c == 0xe0 && byte(i + 1) < 0xa0) return 0;   // overlong
  if (c == 0xed && byte(i + 1) >= 0xa0) return 0;  // surrogates
  if (c == 0xf0 && byte(i + 1) < 0x90) return 0;   // overlong
  if (c == 0xf4 && byte(i + 1) >= 0x90) return 0;  // beyond U+10FFFF
  return need;
}

}  // namespace p2bw
