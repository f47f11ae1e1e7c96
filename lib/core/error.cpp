// Formatting of library-call failures for the check macros in error.hpp.
#include "core/error.hpp"

#include <mpi.h>

#include <fmt/format.h>

#include <sstream>

namespace p2bw {

std::string escape_for_message(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = byte(i);
    size_t length = 0;  // of a valid UTF-8 sequence starting at i, 0 if none
    if (c >= 0x20 && c < 0x7f) {
      length = 1;
    } else if (c >= 0xc2 && c <= 0xf4) {
      const size_t need = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
      bool ok = i + need <= text.size();
      for (size_t k = 1; ok && k < need; ++k) ok = (byte(i + k) & 0xc0) == 0x80;
      if (ok && c == 0xc2 && byte(i + 1) < 0xa0) ok = false;   // C1 controls U+0080..U+009F
      if (ok && c == 0xe0 && byte(i + 1) < 0xa0) ok = false;   // overlong
      if (ok && c == 0xed && byte(i + 1) >= 0xa0) ok = false;  // surrogates
      if (ok && c == 0xf0 && byte(i + 1) < 0x90) ok = false;   // overlong
      if (ok && c == 0xf4 && byte(i + 1) >= 0x90) ok = false;  // beyond U+10FFFF
      if (ok) length = need;
    }
    if (length == 0) {
      out += fmt::format("\\x{:02x}", c);
      ++i;
    } else {
      out.append(text, i, length);
      i += length;
    }
  }
  return out;
}

void throw_call_error(const char* library, const char* call, const std::string& detail,
                      const char* file, int line) {
  std::ostringstream out;
  out << file << ":" << line << ": " << library << " call failed: " << call;
  if (!detail.empty()) out << ": " << detail;
  throw InternalError(out.str());
}

void throw_internal_error(const std::string& message, const char* file, int line) {
  throw InternalError(std::string(file) + ":" + std::to_string(line) +
                      ": internal error: " + message);
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

}  // namespace p2bw
