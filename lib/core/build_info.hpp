// What this binary was built with: p2bw version, Kokkos backends, MPI, HDF5 and NCCL versions.
#pragma once

#include <string>

namespace p2bw {

std::string p2bw_version();
std::string kokkos_description();  // e.g. "Kokkos 3.4.1 (Serial)"
// Several lines: one per component (needs MPI initialised for the MPI library version).
std::string build_description();
// Why this build cannot compute here, or "" when it can: a CUDA build on a machine without a
// usable GPU (no driver, the driver's stub library, no device). Host builds always return "".
std::string missing_device();

}  // namespace p2bw
