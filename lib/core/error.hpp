// Errors of p2bw: UserError for bad input (one line, exit code 2) and check macros that name the
// file and line of a failing MPI, HDF5, CUDA or NCCL call (exit code 1).
#pragma once

#include <stdexcept>
#include <string>

namespace p2bw {

// Exit codes of the p2bw command.
constexpr int kExitOk = 0;
constexpr int kExitInternal = 1;
constexpr int kExitUser = 2;

// `text` safe to print on one terminal line: control characters (newlines and escapes included),
// C1 controls and bytes that are not valid UTF-8 become \xNN; everything else (UTF-8 text such as
// "d·w") stays. Idempotent, so a message escaped twice reads the same.
std::string escape_for_message(const std::string& text);

// A mistake in what the user gave us (deck, command line, input file). The message is one line,
// already prefixed with where the mistake is (e.g. "deck.yaml:12: model.heads: ..."); whatever of
// a file's contents it echoes is escaped (escape_for_message).
class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& message)
      : std::runtime_error(escape_for_message(message)) {}
};

// A failing library call or a broken invariant inside p2bw: a bug or a sick machine.
class InternalError : public std::runtime_error {
 public:
  explicit InternalError(const std::string& message)
      : std::runtime_error(escape_for_message(message)) {}
};

[[noreturn]] void throw_call_error(const char* library, const char* call, const std::string& detail,
                                   const char* file, int line);

[[noreturn]] void throw_internal_error(const std::string& message, const char* file, int line);

// Returns the MPI error string for an MPI error code.
std::string mpi_error_string(int code);

}  // namespace p2bw

#define P2BW_MPI_CHECK(call)                                                                   \
  do {                                                                                         \
    const int p2bw_mpi_rc_ = (call);                                                           \
    if (p2bw_mpi_rc_ != 0 /* MPI_SUCCESS */)                                                   \
      ::p2bw::throw_call_error("MPI", #call, ::p2bw::mpi_error_string(p2bw_mpi_rc_), __FILE__, \
                               __LINE__);                                                      \
  } while (0)

// HDF5 calls return a negative value (herr_t or hid_t) on failure.
#define P2BW_HDF5_CHECK(call)                                                             \
  ([&]() {                                                                                \
    auto p2bw_h5_rc_ = (call);                                                            \
    if (p2bw_h5_rc_ < 0) ::p2bw::throw_call_error("HDF5", #call, "", __FILE__, __LINE__); \
    return p2bw_h5_rc_;                                                                   \
  }())

#define P2BW_CUDA_CHECK(call)                                                              \
  do {                                                                                     \
    const cudaError_t p2bw_cuda_rc_ = (call);                                              \
    if (p2bw_cuda_rc_ != cudaSuccess)                                                      \
      ::p2bw::throw_call_error("CUDA", #call, cudaGetErrorString(p2bw_cuda_rc_), __FILE__, \
                               __LINE__);                                                  \
  } while (0)

#define P2BW_NCCL_CHECK(call)                                                              \
  do {                                                                                     \
    const ncclResult_t p2bw_nccl_rc_ = (call);                                             \
    if (p2bw_nccl_rc_ != ncclSuccess)                                                      \
      ::p2bw::throw_call_error("NCCL", #call, ncclGetErrorString(p2bw_nccl_rc_), __FILE__, \
                               __LINE__);                                                  \
  } while (0)

// An internal failure that is not a library call: InternalError naming this file and line.
#define P2BW_INTERNAL_ERROR(message) ::p2bw::throw_internal_error((message), __FILE__, __LINE__)

// An internal invariant; failing it is a bug in p2bw.
#define P2BW_ASSERT(cond, message)                                                       \
  do {                                                                                   \
    if (!(cond)) ::p2bw::throw_call_error("p2bw", #cond, (message), __FILE__, __LINE__); \
  } while (0)
