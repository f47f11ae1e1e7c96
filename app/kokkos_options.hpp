// Kokkos's own command-line options and environment variables, checked before Kokkos::initialize:
// Kokkos aborts with a backtrace on a value it cannot read (--kokkos-threads=abc,
// KOKKOS_DISABLE_WARNINGS=ON), and p2bw turns each of those mistakes into one line, exit code 2.
// The rules are those of Kokkos 4 (Kokkos 3.4 accepts less and reads a subset), so a value p2bw
// accepts is one either Kokkos takes.
#pragma once

#include <string>

namespace p2bw::app {

// The first bad Kokkos option in argv or KOKKOS_* environment variable, as a one-line message
// naming it and what it allows; "" when there is none.
std::string bad_kokkos_input(int argc, char** argv);

}  // namespace p2bw::app
