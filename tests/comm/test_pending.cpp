// The comm layer's reuse tables on the host: PendingOps (the operations in flight of every
// transport and collectives, by handle) and BufferPool (their staging buffers). Handles count up
// in posting order and are never reused, a finished handle is refused, slots are reused with what
// their last operation left (so vectors keep their capacity and a steady state allocates nothing),
// and a pool hands out each buffer once and allocates only for more at once than ever before.
#include <gtest/gtest.h>

#include <vector>

#include "comm/pending.hpp"
#include "comm/staging.hpp"
#include "core/error.hpp"

namespace p2bw::comm {
namespace {

struct Op {
  int value = 0;
  std::vector<int> requests;
};

TEST(PendingOps, HandlesCountUpAndFinishedOnesAreRefused) {
  PendingOps<Op> pending;
  EXPECT_TRUE(pending.empty());
  EXPECT_EQ(pending.oldest(), -1);
  const int a = pending.add([](Op& op) { op.value = 10; });
  const int b = pending.add([](Op& op) { op.value = 20; });
  const int c = pending.add([](Op& op) { op.value = 30; });
  EXPECT_EQ(a, 0);
  EXPECT_EQ(b, 1);
  EXPECT_EQ(c, 2);
  EXPECT_EQ(pending.at(b).value, 20);
  pending.remove(a);
  EXPECT_EQ(pending.oldest(), b);
  EXPECT_THROW(pending.at(a), InternalError);
  EXPECT_THROW(pending.remove(a), InternalError);
  EXPECT_THROW(pending.at(-1), InternalError);
  EXPECT_THROW(pending.at(7), InternalError);
  // a's slot is reused, under a new handle.
  const int d = pending.add([](Op& op) { op.value = 40; });
  EXPECT_EQ(d, 3);
  EXPECT_EQ(pending.at(d).value, 40);
  EXPECT_EQ(pending.oldest(), b);
  int seen = 0;
  pending.for_each([&](Op& op) { seen += op.value; });
  EXPECT_EQ(seen, 20 + 30 + 40);
  for (const int h : {c, b, d}) pending.remove(h);
  EXPECT_TRUE(pending.empty());
  EXPECT_EQ(pending.oldest(), -1);
}

TEST(PendingOps, AFillThatThrowsLeavesItsSlotFree) {
  PendingOps<Op> pending;
  EXPECT_THROW(pending.add([](Op&) { P2BW_INTERNAL_ERROR("posting failed"); }), InternalError);
  EXPECT_TRUE(pending.empty());
  EXPECT_EQ(pending.add([](Op& op) { op.value = 1; }), 0);  // the failed post took no handle
}

TEST(PendingOps, ReusedSlotsKeepTheirCapacity) {
  PendingOps<Op> pending;
  for (int step = 0; step < 5; ++step) {
    int handles[2];
    for (int k = 0; k < 2; ++k)
      handles[k] = pending.add([&](Op& op) {
        if (step == 0) {
          op.requests.reserve(64);
        } else {  // a reused slot, with the vector its last operation left
          EXPECT_GE(op.requests.capacity(), 64u) << "step " << step << ": a new vector";
        }
        op.requests.assign(8, k);  // as a transport assigns its requests
      });
    pending.remove(handles[1]);
    pending.remove(handles[0]);
  }
}

TEST(BufferPool, HandsOutEachBufferOnceAndReusesIt) {
  BufferPool<int, Kokkos::HostSpace> pool;
  auto a = pool.take(16);
  auto b = pool.take(16);
  auto c = pool.take(32);
  EXPECT_NE(a.data(), b.data());
  EXPECT_EQ(pool.allocations(), 3u);
  EXPECT_EQ(c.extent(0), 32u);
  const int* first = a.data();
  pool.give_back(a);
  EXPECT_THROW(pool.give_back(a), InternalError) << "given back twice";
  auto again = pool.take(16);
  EXPECT_EQ(again.data(), first);
  EXPECT_EQ(pool.allocations(), 3u);
  for (int step = 0; step < 4; ++step) {  // the same sizes in flight: nothing new
    pool.give_back(again);
    pool.give_back(c);
    again = pool.take(16);
    c = pool.take(32);
  }
  EXPECT_EQ(pool.allocations(), 3u);
  EXPECT_EQ(pool.take(16).extent(0), 16u);  // a third at once: one more
  EXPECT_EQ(pool.allocations(), 4u);
  EXPECT_THROW(pool.give_back(Kokkos::View<int*, Kokkos::HostSpace>("other", 16)), InternalError);
}

}  // namespace
}  // namespace p2bw::comm
