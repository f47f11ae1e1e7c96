// Formatting of library-call failures for the check macros in error.hpp.
#include "core/error.hpp"

#include <mpi.h>

#include <fmt/format.h>

#include <sstream>

#include "core/utf8.hpp"

namespace p2bw {

std::string escape_for_message(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t length = utf8_printable_length(text, i);
    if (length == 0) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(text[i]));
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
