// The MPI transport's wire: on a fp32 wire any float travels as its 4 bytes, unchanged; on a bf16
// wire (model.precision: bf16) bf16-exact floats travel as 2 bytes each (MPI_Get_count on the
// probed message says how many bytes MPI carries) and arrive with the same bits, special values
// (signed zeros, infinities, subnormals, the canonical NaN) included; a value that is not
// bf16-exact is an error instead of a silent rounding; messages are matched by microbatch and
// direction, not by arrival order; the packing buffers are reused (nothing is allocated the
// second time the same messages are in flight). Ranks pair up (rank ^ 1); one rank sends to itself.
#include <gtest/gtest.h>
#include <mpi.h>

#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../allocation_counter.hpp"
#include "comm/transport.hpp"
#include "core/error.hpp"
#include "kernels/bf16_round.hpp"
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

FloatView device_copy(const std::vector<float>& host) {
  FloatView view("p2bw::test", host.size());
  auto mirror = Kokkos::create_mirror_view(view);
  for (size_t i = 0; i < host.size(); ++i) mirror(i) = host[i];
  Kokkos::deep_copy(view, mirror);
  return view;
}

std::vector<float> host_copy(const FloatView& view) {
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

TEST(Transport, TheWireCarriesItsBytesAndTheSameBits) {
  if (!paired()) GTEST_SKIP() << "ranks pair up: needs 1 or an even number of ranks";
  const size_t n = 10007;
  for (const Wire wire : {Wire::fp32, Wire::bf16}) {
    // The fp32 wire carries any float; the bf16 wire the bf16-exact ones of a bf16 run.
    const bool exact = wire == Wire::bf16;
    auto transport = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0, wire, Exec());
    const FloatView out = device_copy(values_of(world_rank(), n, exact));  // (n)
    const FloatView in("p2bw::test_in", n);                                // (n)
    const int sent = transport->post_send({out, partner(), 3, Direction::gradient});
    EXPECT_EQ(probed_bytes(partner()), static_cast<int>(n) * bytes_per_value(wire))
        << to_string(wire);
    const int received = transport->post_receive({in, partner(), 3, Direction::gradient});
    transport->wait(sent, "the test's send");
    transport->wait(received, "the test's receive");
    EXPECT_EQ(bit_difference(host_copy(in), values_of(partner(), n, exact)), "")
        << to_string(wire) << " wire";
    EXPECT_EQ(bit_difference(host_copy(out), values_of(world_rank(), n, exact)), "")
        << to_string(wire) << " wire: the send changed its buffer";
  }
  EXPECT_EQ(bytes_per_value(wire_for(config::Precision::bf16)), 2);
  EXPECT_EQ(bytes_per_value(wire_for(config::Precision::fp32)), 4);
  EXPECT_EQ(bytes_per_value(wire_for(config::Precision::tf32)), 4);
}

TEST(Transport, Bf16MessagesAreMatchedByMicrobatchAndDirection) {
  if (!paired()) GTEST_SKIP() << "ranks pair up: needs 1 or an even number of ranks";
  auto transport = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0, Wire::bf16, Exec());
  const size_t n = 513;
  // Sent as (mb 1, activation), (mb 2, activation), (mb 1, gradient); received the other way round.
  const std::vector<std::vector<float>> sent_values = {values_of(10 + world_rank(), n, true),
                                                       values_of(20 + world_rank(), n, true),
                                                       values_of(30 + world_rank(), n, true)};
  const Message kinds[] = {{{}, partner(), 1, Direction::activation},
                           {{}, partner(), 2, Direction::activation},
                           {{}, partner(), 1, Direction::gradient}};
  std::vector<FloatView> out, in;
  for (int k = 0; k < 3; ++k) {
    out.push_back(device_copy(sent_values[k]));
    in.push_back(FloatView("p2bw::test_in", n));
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

TEST(Transport, AValueThatIsNotBf16IsAnErrorOnTheBf16Wire) {
  auto transport = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0, Wire::bf16, Exec());
  std::vector<float> values = values_of(world_rank(), 100, true);
  values[42] = 1.0f + 1.0f / 1024;  // between two bf16 values: the wire would round it
  const FloatView out = device_copy(values);
  try {
    transport->post_send({out, world_rank(), 9, Direction::evaluation});
    ADD_FAILURE() << "a value that is not bf16 was sent on the bf16 wire";
  } catch (const InternalError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("1 of the 100 values of the evaluation activation of microbatch 9"),
              std::string::npos)
        << what;
  }
  // The same values on a fp32 wire: sent as they are, to itself.
  auto fp32 = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0, Wire::fp32, Exec());
  const FloatView in("p2bw::test_in", values.size());
  const auto handles = fp32->post_exchange({out, world_rank(), 9, Direction::evaluation},
                                           {in, world_rank(), 9, Direction::evaluation});
  fp32->wait(handles.first, "the send to itself");
  fp32->wait(handles.second, "the receive from itself");
  EXPECT_EQ(bit_difference(host_copy(in), values), "");
}

TEST(Transport, Bf16PackingBuffersAreReused) {
  if (!paired()) GTEST_SKIP() << "ranks pair up: needs 1 or an even number of ranks";
  auto transport = make_mpi_transport(MPI_COMM_WORLD, 60.0, 0, Wire::bf16, Exec());
  // Two sizes, several in flight at once, as a pipeline step has them.
  std::vector<FloatView> out, in;
  for (size_t n : {size_t{1000}, size_t{1000}, size_t{3000}}) {
    out.push_back(device_copy(values_of(world_rank(), n, true)));
    in.push_back(FloatView("p2bw::test_in", n));
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
    EXPECT_EQ(bit_difference(host_copy(in[k]), values_of(partner(), in[k].extent(0), true)), "");
}

}  // namespace
}  // namespace p2bw::comm
