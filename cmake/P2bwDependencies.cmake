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
find_package(nlohmann_json 3 REQUIRED)  # nlohmann-json3-dev (p2bw plan --format json)

# Host BLAS through CBLAS (OpenBLAS on Debian and Ubuntu) for host-space GEMMs and attention tiles.
# -DP2BW_CBLAS=OFF leaves it out: a CUDA build then runs its host-space GEMMs on the native kernel
# (the bundle does: libopenblas is 36 MB), and a host build runs every kernel on the native team
# kernels a GPU runs, slowly (scripts/kokkos4-host-check uses that to run them threaded).
option(P2BW_CBLAS "Link a CBLAS (OpenBLAS) for host-space GEMMs" ON)
add_library(p2bw_blas INTERFACE)
if(NOT P2BW_CBLAS)
  message(STATUS "p2bw: no CBLAS (P2BW_CBLAS=OFF): host-space GEMMs use the native Kokkos kernel")
else()
set(BLA_VENDOR OpenBLAS CACHE STRING "BLAS vendor")
find_package(BLAS REQUIRED)
# OpenBLAS's own cblas.h first: Debian's reference BLAS (libblas-dev) puts netlib's cblas.h on the
# default include path, which must not shadow the header of the library we link.
set(_cblas_dirs)
foreach(_base /usr/include/${CMAKE_LIBRARY_ARCHITECTURE} /usr/include)
  list(APPEND _cblas_dirs ${_base}/openblas-pthread ${_base}/openblas-openmp ${_base}/openblas-serial ${_base}/openblas)
endforeach()
find_path(P2BW_CBLAS_INCLUDE_DIR cblas.h PATHS ${_cblas_dirs} NO_DEFAULT_PATH)
find_path(P2BW_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread)
if(NOT P2BW_CBLAS_INCLUDE_DIR)
  message(FATAL_ERROR "cblas.h not found: install libopenblas-dev")
endif()
target_include_directories(p2bw_blas INTERFACE ${P2BW_CBLAS_INCLUDE_DIR})
target_link_libraries(p2bw_blas INTERFACE ${BLAS_LIBRARIES})
target_compile_definitions(p2bw_blas INTERFACE P2BW_HAVE_CBLAS)
endif()

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

# The NCCL transport and collectives (lib/comm/nccl.cpp): CUDA builds only, off until they have
# run on GPUs; with it, pipeline.transport: auto picks NCCL where every rank has its own GPU.
option(P2BW_NCCL "Build the NCCL transport and collectives (CUDA builds; never run on a GPU yet)" OFF)
if(P2BW_NCCL AND NOT P2BW_CUDA)
  message(FATAL_ERROR "P2BW_NCCL needs Kokkos with the CUDA backend")
endif()

# cuDNN's fused flash attention for bf16 (kernels/cudnn_attention.cpp): CUDA builds only, off until
# it has run on a GPU. It needs cuDNN 9's headers (the CUDA toolkit's or /usr/include) and the
# header-only cuDNN frontend (github.com/NVIDIA/cudnn-frontend, >= 1.23; not downloaded: give its
# include folder as P2BW_CUDNN_FRONTEND_INCLUDE). libcudnn.so.9 is loaded at run time (dlopen), so
# p2bw also starts on machines without cuDNN and runs the native attention there.
option(P2BW_CUDNN "Build cuDNN's fused attention for bf16 (CUDA builds; never run on a GPU yet)" OFF)
set(P2BW_CUDNN_FRONTEND_INCLUDE "" CACHE PATH "the cuDNN frontend's include folder (cudnn_frontend.h)")
if(P2BW_CUDNN)
  if(NOT P2BW_CUDA)
    message(FATAL_ERROR "P2BW_CUDNN needs Kokkos with the CUDA backend")
  endif()
  if(NOT EXISTS "${P2BW_CUDNN_FRONTEND_INCLUDE}/cudnn_frontend.h")
    message(FATAL_ERROR "P2BW_CUDNN: no cudnn_frontend.h in P2BW_CUDNN_FRONTEND_INCLUDE='${P2BW_CUDNN_FRONTEND_INCLUDE}' (the include folder of github.com/NVIDIA/cudnn-frontend)")
  endif()
  find_path(P2BW_CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/include)
  if(NOT P2BW_CUDNN_INCLUDE_DIR)
    message(FATAL_ERROR "P2BW_CUDNN: cudnn.h (cuDNN 9) not found")
  endif()
endif()

if(P2BW_BUILD_TESTS)
  # Debian ships GoogleTest built; Ubuntu's googletest package may hold only its sources.
  find_package(GTest QUIET)
  if(NOT GTest_FOUND AND EXISTS /usr/src/googletest/CMakeLists.txt)
    set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
    set(BUILD_GMOCK OFF CACHE BOOL "" FORCE)
    add_subdirectory(/usr/src/googletest ${CMAKE_BINARY_DIR}/googletest EXCLUDE_FROM_ALL)
    if(NOT TARGET GTest::gtest)
      add_library(GTest::gtest ALIAS gtest)
      add_library(GTest::gtest_main ALIAS gtest_main)
    endif()
  elseif(NOT GTest_FOUND)
    message(FATAL_ERROR "GoogleTest not found: install libgtest-dev or configure with -DP2BW_BUILD_TESTS=OFF")
  endif()
endif()
