// Host staging buffers for MPI (which need not be CUDA-aware), kept and reused across steps, so a
// steady-state step allocates none. On CUDA builds they are pinned host memory (StagingSpace,
// core/device.hpp); on host builds the device buffer is host memory already and is handed to MPI
// itself, with no copy. BufferPool is the same reuse for any buffer.
#pragma once

#include <cstddef>
#include <type_traits>
#include <vector>

#include "core/device.hpp"
#include "core/error.hpp"

namespace p2bw::comm {

// Buffers of T in Space, allocated on first need and reused after: take(n) hands out a free one of
// length n, give_back() returns it when its user is done with it. Neither allocates host memory
// once the pool holds every buffer it will need (a stage uses a few sizes), so lookups scan.
template <class T, class Space>
class BufferPool {
 public:
  using Buffer = Kokkos::View<T*, Space>;  // (n)

  Buffer take(std::size_t n) {
    for (Entry& entry : buffers_)
      if (!entry.taken && entry.buffer.extent(0) == n) {
        entry.taken = true;
        return entry.buffer;
      }
    buffers_.push_back(
        {Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::staging"), n), true});
    return buffers_.back().buffer;
  }

  void give_back(const Buffer& buffer) {
    for (Entry& entry : buffers_)
      if (entry.taken && entry.buffer.data() == buffer.data()) {
        entry.taken = false;
        return;
      }
    P2BW_INTERNAL_ERROR("a staging buffer given back that the pool did not hand out");
  }

  // Buffers allocated so far: constant once every message size has been seen as often at once.
  std::size_t allocations() const { return buffers_.size(); }

 private:
  struct Entry {
    Buffer buffer;
    bool taken;
  };
  std::vector<Entry> buffers_;
};

// Host staging for device Views of T: take() hands out a buffer for a device View (the View
// itself when it lives in host memory), give_back() returns it when MPI is done with it.
template <class T>
class StagingPool {
 public:
  using Buffer = typename BufferPool<T, StagingSpace>::Buffer;  // (n)
  // Whether device buffers need a host copy at all (false on host builds).
  static constexpr bool copies = !std::is_same<StagingSpace, Memory>::value;

  template <class DeviceView>
  Buffer take(const DeviceView& data) {
    if constexpr (!copies) {
      return data;
    } else {
      return pool_.take(data.extent(0));
    }
  }

  void give_back(const Buffer& buffer) {
    if constexpr (copies) pool_.give_back(buffer);
  }

  // Staging buffers allocated so far: constant once every message size has been seen.
  std::size_t allocations() const { return pool_.allocations(); }

 private:
  BufferPool<T, StagingSpace> pool_;
};

}  // namespace p2bw::comm
