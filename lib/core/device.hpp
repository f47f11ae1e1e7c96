// The device p2bw computes on: Kokkos's default execution space, its memory space and the flat
// Views that every layer (model, communication, executor) passes around. Defined once, here.
#pragma once

#include <Kokkos_Core.hpp>

namespace p2bw {

using Exec = Kokkos::DefaultExecutionSpace;
using Memory = Exec::memory_space;
using FloatView = Kokkos::View<float*, Memory>;  // flat
using ConstFloatView = Kokkos::View<const float*, Memory>;
using DoubleView = Kokkos::View<double*, Memory>;  // flat
using IntView = Kokkos::View<int*, Memory>;        // flat

// Host memory that copies to and from the device read or write after the call has returned:
// pinned on CUDA builds (a cudaMemcpyAsync from it is asynchronous and runs by DMA at full speed;
// it is refilled once a StreamMark says the copies are done), ordinary host memory otherwise.
#ifdef KOKKOS_ENABLE_CUDA
using StagingSpace = Kokkos::CudaHostPinnedSpace;
#else
using StagingSpace = Kokkos::HostSpace;
#endif

// A View's host mirror type: `host_mirror_type` exists from Kokkos 3.4 on; `HostMirror` is
// deprecated in Kokkos 5. Write HostMirror<V>, never V::HostMirror.
template <class V>
using HostMirror = typename V::host_mirror_type;

}  // namespace p2bw
