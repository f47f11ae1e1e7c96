# Finds every dependency of p2bw with find_package (nothing vendored, nothing downloaded) and
# normalises the imported targets: Debian's Kokkos 3.4.01 exports a wrong include directory.

find_package(Kokkos REQUIRED)
# Debian's Kokkos::kokkos carries INTERFACE_INCLUDE_DIRECTORIES "/usr/lib/include", which does not
# exist; CMake refuses to generate with it. Point every Kokkos target at the real headers.
foreach(_tgt Kokkos::kokkos Kokkos::kokkoscore Kokkos::kokkoscontainers Kokkos::kokkosalgorithms)
  if(TARGET ${_tgt})
    get_target_property(_inc ${_tgt} INTERFACE_INCLUDE_DIRECTORIES)
    set(_fixed "")
    foreach(_dir IN LISTS _inc)
      if(_dir AND NOT _dir MATCHES "NOTFOUND" AND NOT EXISTS "${_dir}")
        continue()
      endif()
      list(APPEND _fixed "${_dir}")
    endforeach()
    if(Kokkos_INCLUDE_DIRS)
      list(APPEND _fixed ${Kokkos_INCLUDE_DIRS})
    endif()
    list(REMOVE_DUPLICATES _fixed)
    set_target_properties(${_tgt} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_fixed}")
  endif()
endforeach()

include(CheckCXXSymbolExists)
set(CMAKE_REQUIRED_LIBRARIES Kokkos::kokkos)
set(P2BW_CUDA OFF)
if(Kokkos_DEVICES MATCHES "CUDA" OR Kokkos_ENABLE_CUDA)
  set(P2BW_CUDA ON)
endif()
unset(CMAKE_REQUIRED_LIBRARIES)
message(STATUS "p2bw: Kokkos ${Kokkos_VERSION}, devices: ${Kokkos_DEVICES}, CUDA backend: ${P2BW_CUDA}")

find_package(MPI REQUIRED COMPONENTS C CXX)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(yaml-cpp REQUIRED)
find_package(CLI11 REQUIRED)
find_package(fmt REQUIRED)

# Host BLAS through CBLAS (OpenBLAS on Debian and Ubuntu).
set(BLA_VENDOR OpenBLAS CACHE STRING "BLAS vendor")
find_package(BLAS REQUIRED)
find_path(P2BW_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread
          HINTS /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu)
if(NOT P2BW_CBLAS_INCLUDE_DIR)
  message(FATAL_ERROR "cblas.h not found: install libopenblas-dev")
endif()
add_library(p2bw_blas INTERFACE)
target_include_directories(p2bw_blas INTERFACE ${P2BW_CBLAS_INCLUDE_DIR})
target_link_libraries(p2bw_blas INTERFACE ${BLAS_LIBRARIES})

# yaml-cpp 0.7 exports the target "yaml-cpp", 0.8 "yaml-cpp::yaml-cpp".
if(TARGET yaml-cpp::yaml-cpp)
  set(P2BW_YAML_TARGET yaml-cpp::yaml-cpp)
else()
  set(P2BW_YAML_TARGET yaml-cpp)
endif()

if(P2BW_CUDA)
  find_package(CUDAToolkit REQUIRED)
  find_path(P2BW_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/include)
  find_library(P2BW_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu)
  if(NOT P2BW_NCCL_INCLUDE_DIR OR NOT P2BW_NCCL_LIBRARY)
    message(FATAL_ERROR "NCCL not found (nccl.h, libnccl): needed with the CUDA backend")
  endif()
  add_library(p2bw_nccl INTERFACE)
  target_include_directories(p2bw_nccl INTERFACE ${P2BW_NCCL_INCLUDE_DIR})
  target_link_libraries(p2bw_nccl INTERFACE ${P2BW_NCCL_LIBRARY})
endif()

if(P2BW_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
