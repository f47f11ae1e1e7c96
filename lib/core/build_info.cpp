// Version and build description for `p2bw --version` and the outputs' root attributes.
#include "core/build_info.hpp"

#include <fmt/format.h>
#include <hdf5.h>
#include <mpi.h>
#include <Kokkos_Core.hpp>

#include <vector>

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#endif
#ifdef P2BW_CUDNN
#include "kernels/cudnn_attention.hpp"
#endif

#ifndef P2BW_VERSION
#define P2BW_VERSION "unknown"
#endif

namespace p2bw {

std::string p2bw_version() {
  return P2BW_VERSION;
}

std::string kokkos_description() {
  std::vector<std::string> backends;
#ifdef KOKKOS_ENABLE_SERIAL
  backends.push_back("Serial");
#endif
#ifdef KOKKOS_ENABLE_OPENMP
  backends.push_back("OpenMP");
#endif
#ifdef KOKKOS_ENABLE_THREADS
  backends.push_back("Threads");
#endif
#ifdef KOKKOS_ENABLE_CUDA
  backends.push_back("CUDA");
#endif
#ifdef KOKKOS_ENABLE_HIP
  backends.push_back("HIP");
#endif
  return fmt::format("Kokkos {}.{}.{} ({}; default execution space {})", KOKKOS_VERSION / 10000,
                     KOKKOS_VERSION / 100 % 100, KOKKOS_VERSION % 100, fmt::join(backends, ", "),
                     Kokkos::DefaultExecutionSpace::name());
}

std::string build_description() {
  char mpi_library[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int length = 0;
  MPI_Get_library_version(mpi_library, &length);
  std::string mpi(mpi_library, static_cast<size_t>(length));
  mpi = mpi.substr(0, mpi.find('\n'));
  unsigned h5_major = 0, h5_minor = 0, h5_release = 0;
  H5get_libversion(&h5_major, &h5_minor, &h5_release);
  std::string nccl = "not built (host build)";
#ifdef KOKKOS_ENABLE_CUDA
  int nccl_code = 0;
  ncclGetVersion(&nccl_code);
  nccl = fmt::format("{}.{}.{}", nccl_code / 10000, nccl_code / 100 % 100, nccl_code % 100);
#endif
  std::string attention = "host kernels (no GPU in this build)";
#if defined(KOKKOS_ENABLE_CUDA) && !defined(P2BW_CUDNN)
  attention = "the native kernels (built without cuDNN)";
#endif
#ifdef P2BW_CUDNN
  attention = "bf16 on cuDNN's fused attention where libcudnn.so.9 loads (built against " +
              kernels::cudnn_built_against() + ")";
#endif
  return fmt::format("p2bw {}\n{}\nMPI: {}\nHDF5 {}.{}.{}\nNCCL: {}\nattention: {}\n",
                     p2bw_version(), kokkos_description(), mpi, h5_major, h5_minor, h5_release,
                     nccl, attention);
}

std::string missing_device() {
#ifdef KOKKOS_ENABLE_CUDA
  int devices = 0;
  const cudaError_t rc = cudaGetDeviceCount(&devices);
  if (rc != cudaSuccess)
    return fmt::format("no usable CUDA GPU (cudaGetDeviceCount: {}, {})", cudaGetErrorName(rc),
                       cudaGetErrorString(rc));
  if (devices == 0) return "no CUDA GPU on this machine (cudaGetDeviceCount: 0 devices)";
#endif
  return "";
}

}  // namespace p2bw
