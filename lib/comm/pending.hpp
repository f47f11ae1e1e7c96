// The operations in flight of a transport or of the collectives, by handle: the one table that the
// MPI and NCCL transports and collectives share. Handles count up from 0 in posting order and
// are never reused; the slots that hold the operations are, so once as many operations have been
// in flight at once as ever will be, posting allocates nothing (an operation's vectors and strings
// keep their capacity in its slot). A stage has a few operations in flight, so lookups scan.
#pragma once

#include <utility>
#include <vector>

#include "core/error.hpp"

namespace p2bw::comm {

template <class Op>
class PendingOps {
 public:
  // Posts an operation: fill(op) sets every field of a slot's Op (which keeps what the slot's last
  // operation left in it) and posts it. Returns the operation's handle.
  template <class Fill>
  int add(const Fill& fill) {
    Slot* slot = nullptr;
    for (Slot& s : slots_)
      if (s.handle < 0) {
        slot = &s;
        break;
      }
    if (!slot) slot = &slots_.emplace_back();
    fill(slot->op);  // may throw: the slot stays free
    slot->handle = next_;
    return next_++;
  }

  // The operation of a handle that is in flight. References stay valid until the next add().
  Op& at(int handle) { return find(handle).op; }

  // Frees the slot of a handle in flight: the handle is finished.
  void remove(int handle) { find(handle).handle = -1; }

  bool empty() const {
    for (const Slot& s : slots_)
      if (s.handle >= 0) return false;
    return true;
  }

  // The handle posted first of those in flight (-1 when none is).
  int oldest() const {
    int first = -1;
    for (const Slot& s : slots_)
      if (s.handle >= 0 && (first < 0 || s.handle < first)) first = s.handle;
    return first;
  }

  // f(op) for every operation in flight (error paths: cancelling them).
  template <class F>
  void for_each(const F& f) {
    for (Slot& s : slots_)
      if (s.handle >= 0) f(s.op);
  }

 private:
  struct Slot {
    int handle = -1;  // -1: free
    Op op;
  };
  Slot& find(int handle) {
    for (Slot& s : slots_)
      if (s.handle == handle && handle >= 0) return s;
    P2BW_INTERNAL_ERROR("an operation that was never posted or has finished");
  }

  std::vector<Slot> slots_;
  int next_ = 0;
};

}  // namespace p2bw::comm
