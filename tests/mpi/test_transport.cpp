// The MPI transport sends a buffer's bytes: a float buffer 4 bytes per value, a bf16 buffer
// (model.precision: bf16) 2 (MPI_Get_count on the probed message says how many bytes MPI
// carries), and they arrive with the same bits, special values (signed zeros, infinities,
// subnormals, the canonical NaN) included; messages are matched by microbatch and direction, not
// by arrival order; staging is reused (nothing is allocated the second time the same messages
// are in flight). A message larger than the transport's limit on one MPI message (MPI counts in an
// int) goes in pieces and arrives whole, matched as one; the MPI collectives sum a buffer larger
// than their limit in pieces. Ranks pair up (rank ^ 1); one rank sends to itself.
#include <gtest/gtest.h>
#include <mpi.h>

#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../allocation_counter.hpp"
#include "comm/collectives.hpp"
#include "comm/process_grid.hpp"
#include "comm/transport.hpp"
#include "core/error.hpp"
#include "core/store_view.hpp"
#include "kernels/bf16.hpp"
#include "mpi_world.hpp"

namespace p2bw::comm {
namespace {

using p2bw::testing::world_rank;
using p2bw::testing::world_size;

// The peer of this rank: itself on one rank, else its partner rank ^ 1 (an even world).
int partner() {
  return world_size() == 1 ? 0 : world_rank() ^ 1;
}
bool paired() {
  return world_size() == 1 || world_size() % 2 == 0;
}

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// n floats sent by `rank`: bf16-exact ones (`exact`) or any floats, varied in every bit they may
// have, with the special values first.
std::vector<float> values_of(int rank, size_t n, bool exact) {
  std::vector<float> v = {0.0f,
                          from_bits(0x80000000u),
                          from_bits(0x7f800000u),
                          from_bits(0xff800000u),
                          from_bits(0x00010000u),  // subnormal bf16
                          from_bits(0x807f0000u),
                          from_bits(0x7f7f0000u),   // largest bf16
                          from_bits(0x7fff0000u)};  // the canonical NaN
  std::uint32_t state = 12345u + 977u * static_cast<std::uint32_t>(rank);
  while (v.size() < n) {
    state = state * 1664525u + 1013904223u;
    const float f = static_cast<float>(static_cast<std::int32_t>(state)) * 1e-9f;
    v.push_back(exact ? kernels::round_to_bf16(f) : f);
  }
  v.resize(n);
  return v;
}

// The values in a device buffer of floats, or of bf16 (the values must be bf16-exact then).
StoreView device_copy(const std::vector<float>& host, bool bf16) {
  FloatView view("p2bw::test", host.size());
  auto mirror = Kokkos::create_mirror_view(view);
  for (size_t i = 0; i < host.size(); ++i) mirror(i) = host[i];
  Kokkos::deep_copy(view, mirror);
  if (!bf16) return view;
  const StoreView stored =
      StoreView::allocate("p2bw::test", static_cast<std::int64_t>(host.size()), true);
  narrow_into(Exec(), stored, view);
  Exec().fence();
  return stored;
}

std::vector<float> host_copy(const StoreView& buffer) {
  FloatView view("p2bw::test", static_cast<size_t>(buffer.size()));
  widen_into(Exec(), view, buffer);
  auto mirror = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  return std::vector<float>(mirror.data(), mirror.data() + mirror.extent(0));
}

// "" when a and b have the same bits, else the first difference.
std::string bit_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return fmt::format("{} values against {}", a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    if (bits_of(a[i]) != bits_of(b[i]))
      return fmt::format("value {}: {:#010x} against {:#010x}", i, bits_of(a[i]), bits_of(b[i]));
  return "";
}

// The bytes of the next message from `peer` as MPI carries it (probed, not received).
int probed_bytes(int peer) {
  MPI_Status status;
  P2BW_MPI_CHECK(MPI_Probe(peer, MPI_ANY_TAG, MPI_COMM_WORLD, &status));
  int bytes = 0;
  P2BW_MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &bytes));
  return bytes;
}

TEST(Transport, AMessageIsItsBuffersBytesWithTheSameBits) {
  if (!paired()) GTEST_SKIP() << "ranks pair up: needs 1 or an even number of ranks";
  const size_t n = 10007;
  auto transport = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0);
  for (const bool bf16 : {false, true}) {
    // A float buffer carries any float; a bf16 buffer bf16 values.
    const char* type = bf16 ? "bf16" : "float";
    const StoreView out = device_copy(values_of(world_rank(), n, bf16), bf16);  // (n)
    const StoreView in = StoreView::allocate("p2bw::test_in", n, bf16);         // (n)
    const int sent = transport->post_send({out, partner(), 3, Direction::gradient});
    EXPECT_EQ(probed_bytes(partner()), static_cast<int>(n) * (bf16 ? 2 : 4)) << type;
    const int received = transport->post_receive({in, partner(), 3, Direction::gradient});
    transport->wait(sent, "the test's send");
    transport->wait(received, "the test's receive");
    EXPECT_EQ(bit_difference(host_copy(in), values_of(partner(), n, bf16)), "") << type;
    EXPECT_EQ(bit_difference(host_copy(out), values_of(world_rank(), n, bf16)), "")
        << type << ": the send changed its buffer";
  }
}

TEST(Transport, Bf16MessagesAreMatchedByMicrobatchAndDirection) {
  if (!paired()) GTEST_SKIP() << "ranks pair up: needs 1 or an even number of ranks";
  auto transport = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0);
  const size_t n = 513;
  // Sent as (mb 1, activation), (mb 2, activation), (mb 1, gradient); received the other way round.
  const std::vector<std::vector<float>> sent_values = {values_of(10 + world_rank(), n, true),
                                                       values_of(20 + world_rank(), n, true),
                                                       values_of(30 + world_rank(), n, true)};
  const Message kinds[] = {{{}, partner(), 1, Direction::activation},
                           {{}, partner(), 2, Direction::activation},
                           {{}, partner(), 1, Direction::gradient}};
  std::vector<StoreView> out, in;
  for (int k = 0; k < 3; ++k) {
    out.push_back(device_copy(sent_values[k], true));
    in.push_back(StoreView::allocate("p2bw::test_in", n, true));
    Message m = kinds[k];
    m.buffer = out.back();
    transport->post_send(m);
  }
  for (int k = 2; k >= 0; --k) {
    Message m = kinds[k];
    m.buffer = in[k];
    transport->wait(transport->post_receive(m), "the test's receive");
  }
  transport->wait_all("the test's sends");
  for (int k = 0; k < 3; ++k)
    EXPECT_EQ(bit_difference(host_copy(in[k]), values_of(10 * (k + 1) + partner(), n, true)), "")
        << "message " << k;
}

TEST(Transport, AnExchangeWithItselfArrives) {
  auto transport = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0);
  const std::vector<float> values = values_of(world_rank(), 100, false);
  const StoreView out = device_copy(values, false);
  const StoreView in = StoreView::allocate("p2bw::test_in", 100, false);
  const auto handles = transport->post_exchange({out, world_rank(), 9, Direction::evaluation},
                                                {in, world_rank(), 9, Direction::evaluation});
  transport->wait(handles.first, "the send to itself");
  transport->wait(handles.second, "the receive from itself");
  EXPECT_EQ(bit_difference(host_copy(in), values), "");
}

TEST(Transport, StagingIsReused) {
  if (!paired()) GTEST_SKIP() << "ranks pair up: needs 1 or an even number of ranks";
  auto transport = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0);
  // Two sizes, several in flight at once, as a pipeline step has them.
  std::vector<StoreView> out, in;
  for (size_t n : {size_t{1000}, size_t{1000}, size_t{3000}}) {
    out.push_back(device_copy(values_of(world_rank(), n, true), true));
    in.push_back(StoreView::allocate("p2bw::test_in", static_cast<std::int64_t>(n), true));
  }
  const auto round = [&] {
    for (size_t k = 0; k < out.size(); ++k) {
      const int mb = static_cast<int>(k);
      transport->post_exchange({out[k], partner(), mb, Direction::activation},
                               {in[k], partner(), mb, Direction::activation});
    }
    transport->wait_all("the test's exchanges");
  };
  round();
  const testing::AllocationCounter counter;
  for (int r = 0; r < 3; ++r) round();
  EXPECT_TRUE(counter.allocations().empty()) << "allocated: " << counter.summary();
  for (size_t k = 0; k < out.size(); ++k)
    EXPECT_EQ(bit_difference(host_copy(in[k]),
                             values_of(partner(), static_cast<size_t>(in[k].size()), true)),
              "");
}

// With a limit of 1000 bytes per MPI message, a 40028-byte float message goes as 41 MPI messages
// and a 20014-byte bf16 one as 21; two such messages in flight at once are still matched by
// microbatch, received in the other order.
TEST(Transport, AMessageOverTheLimitGoesInPiecesAndArrivesWhole) {
  if (!paired()) GTEST_SKIP() << "ranks pair up: needs 1 or an even number of ranks";
  const std::int64_t limit = 1000;
  auto transport = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0, limit);
  const size_t n = 10007;
  for (const bool bf16 : {false, true}) {
    const char* type = bf16 ? "bf16" : "float";
    const StoreView first = device_copy(values_of(world_rank(), n, bf16), bf16);        // (n)
    const StoreView second = device_copy(values_of(50 + world_rank(), n, bf16), bf16);  // (n)
    const StoreView in_first = StoreView::allocate("p2bw::test_in", n, bf16);           // (n)
    const StoreView in_second = StoreView::allocate("p2bw::test_in", n, bf16);          // (n)
    transport->post_send({first, partner(), 1, Direction::activation});
    transport->post_send({second, partner(), 2, Direction::activation});
    EXPECT_EQ(probed_bytes(partner()), limit) << type << ": the first piece";
    const int got_second =
        transport->post_receive({in_second, partner(), 2, Direction::activation});
    const int got_first = transport->post_receive({in_first, partner(), 1, Direction::activation});
    transport->wait(got_second, "the test's second receive");
    transport->wait(got_first, "the test's first receive");
    transport->wait_all("the test's sends");
    EXPECT_EQ(bit_difference(host_copy(in_first), values_of(partner(), n, bf16)), "") << type;
    EXPECT_EQ(bit_difference(host_copy(in_second), values_of(50 + partner(), n, bf16)), "") << type;
  }
}

// Values whose sum over any number of ranks, in any order, is exact: rank r holds (i % 97)·(r + 1).
template <class View>
View rank_values(size_t n) {
  View view("p2bw::test", n);
  auto host = Kokkos::create_mirror_view(view);
  for (size_t i = 0; i < n; ++i)
    host(i) = static_cast<typename View::value_type>((i % 97) * (world_rank() + 1));
  Kokkos::deep_copy(view, host);
  return view;
}

template <class View>
std::string sum_difference(const View& view) {
  const double ranks_sum = world_size() * (world_size() + 1) / 2.0;
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  for (size_t i = 0; i < host.extent(0); ++i)
    if (static_cast<double>(host(i)) != static_cast<double>(i % 97) * ranks_sum)
      return fmt::format("value {}: {} against {}", i, static_cast<double>(host(i)),
                         static_cast<double>(i % 97) * ranks_sum);
  return "";
}

// With a limit of 1000 elements per MPI reduction: 10007 floats are summed as 11 reductions, 4000
// doubles as exactly 4, both in flight at once, over the world and over the replicas.
TEST(Collectives, ABufferOverTheLimitIsSummedInPieces) {
  const ProcessGrid grid(MPI_COMM_WORLD, 1, world_size());
  auto collectives = make_mpi_collectives(grid, 60.0, 1000);
  const FloatView floats = rank_values<FloatView>(10007);    // (10007)
  const DoubleView doubles = rank_values<DoubleView>(4000);  // (4000)
  const int summed_floats = collectives->post_sum(floats, Group::world, "the test's float sum");
  const int summed_doubles =
      collectives->post_sum(doubles, Group::replicas, "the test's double sum");
  collectives->wait(summed_doubles);
  while (!collectives->test(summed_floats)) {
  }
  EXPECT_FALSE(collectives->pending());
  EXPECT_EQ(sum_difference(floats), "");
  EXPECT_EQ(sum_difference(doubles), "");
}

}  // namespace
}  // namespace p2bw::comm
