// Formatting of library-call failures for the check macros in error.hpp.
#include "core/error.hpp"

#include <mpi.h>

#include <sstream>

namespace p2bw {

void throw_call_error(const char* library, const char* call, const std::string& detail,
                      const char* file, int line) {
  std::ostringstream out;
  out << file << ":" << line << ": " << library << " call failed: " << call;
  if (!detail.empty()) out << ": " << detail;
  throw InternalError(out.str());
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

}  // namespace p2bw
