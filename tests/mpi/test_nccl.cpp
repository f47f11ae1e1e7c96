// The NCCL transport and collectives on real GPUs (built only with -DP2BW_NCCL=ON): on one rank a
// one-rank communicator's sums and an exchange with itself; on more ranks, when every rank has
// its own GPU, an exchange between partner ranks and a world sum. Ranks that share a GPU skip
// with the reason. The exchanges run on float and on bf16 buffers (sent as ncclBfloat16, the same
// bits back). Never run yet: no GPU machine was available when it was written.
#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "comm/nccl.hpp"
#include "comm/process_grid.hpp"
#include "comm/transport_choice.hpp"
#include "core/store_view.hpp"
#include "mpi_world.hpp"

namespace p2bw::comm {
namespace {

using p2bw::testing::world_rank;
using p2bw::testing::world_size;

template <class View>
View filled(size_t n, double first) {  // first, first + 1, ...
  View view("p2bw::test", n);
  auto host = Kokkos::create_mirror_view(view);
  for (size_t i = 0; i < n; ++i) host(i) = static_cast<typename View::value_type>(first + i);
  Kokkos::deep_copy(view, host);
  return view;
}

// A bf16 buffer of n varied values, `salt` telling sets apart.
StoreView bf16_values(size_t n, int salt) {
  FloatView view("p2bw::test", n);
  auto host = Kokkos::create_mirror_view(view);
  for (size_t i = 0; i < n; ++i)
    host(i) = static_cast<float>((i * 7919 + salt) % 2001) / 997.0f - 1.0f;
  Kokkos::deep_copy(view, host);
  const StoreView stored = StoreView::allocate("p2bw::test", static_cast<std::int64_t>(n), true);
  narrow_into(Exec(), stored, view);
  return stored;
}

template <class View>
std::vector<double> values(const View& view) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), view);
  return std::vector<double>(host.data(), host.data() + host.extent(0));
}
std::vector<double> values(const StoreView& buffer) {
  FloatView view("p2bw::test", static_cast<size_t>(buffer.size()));
  widen_into(Exec(), view, buffer);
  return values(view);
}

// Why NCCL cannot run across this world's ranks, or "" when it can.
std::string why_not() {
  const TransportChoice choice = choose_transport(
      config::TransportKind::automatic, gather_rank_gpus(MPI_COMM_WORLD), build_has_nccl(), "test");
  return choice.backend == TransportBackend::nccl ? "" : choice.reason;
}

TEST(Nccl, OneRankSumsLeaveTheBufferAsItWas) {
  if (world_size() != 1) GTEST_SKIP() << "the one-rank communicator test runs on one rank";
  if (const std::string why = why_not(); !why.empty()) GTEST_SKIP() << why;
  const ProcessGrid grid(MPI_COMM_WORLD, 1, 1);
  Exec exec;
  auto collectives = make_nccl_collectives(grid, 60.0, exec);
  const FloatView floats = filled<FloatView>(1000, 1.0);   // (1000)
  const DoubleView doubles = filled<DoubleView>(10, 0.5);  // (10)
  collectives->wait(collectives->post_sum(floats, Group::world, "a float sum"));
  const int handle = collectives->post_sum(doubles, Group::replicas, "a double sum");
  collectives->wait(handle);
  EXPECT_FALSE(collectives->pending());
  EXPECT_EQ(values(floats), values(filled<FloatView>(1000, 1.0)));
  EXPECT_EQ(values(doubles), values(filled<DoubleView>(10, 0.5)));
  collectives->barrier(Group::world, "the end of the test");
}

TEST(Nccl, ExchangeWithItself) {
  if (world_size() != 1) GTEST_SKIP() << "the one-rank communicator test runs on one rank";
  if (const std::string why = why_not(); !why.empty()) GTEST_SKIP() << why;
  const ProcessGrid grid(MPI_COMM_WORLD, 1, 1);
  Exec exec;
  auto transport = make_nccl_transport(grid, 60.0, exec);
  for (const bool bf16 : {false, true}) {
    const StoreView out =
        bf16 ? bf16_values(4096, 3) : StoreView(filled<FloatView>(4096, 3.0));  // (4096)
    const StoreView in = StoreView::allocate("p2bw::test", 4096, bf16);         // (4096)
    const auto handles = transport->post_exchange({out, 0, 7, Direction::activation},
                                                  {in, 0, 7, Direction::activation});
    transport->wait(handles.first, "the send to itself");
    transport->wait(handles.second, "the receive from itself");
    EXPECT_EQ(values(in), values(out)) << (bf16 ? "bf16" : "float");
  }
}

TEST(Nccl, PartnersExchangeAndTheWorldSums) {
  if (world_size() < 2 || world_size() % 2 != 0)
    GTEST_SKIP() << "needs an even number of ranks, one GPU each";
  if (const std::string why = why_not(); !why.empty()) GTEST_SKIP() << why;
  const ProcessGrid grid(MPI_COMM_WORLD, world_size(), 1);
  Exec exec;
  auto collectives = make_nccl_collectives(grid, 60.0, exec);
  const int partner = world_rank() ^ 1;
  auto transport = make_nccl_transport(grid, 60.0, exec);
  for (const bool bf16 : {false, true}) {
    const auto sent_by = [&](int rank) {  // (2^20)
      return bf16 ? bf16_values(1 << 20, rank) : StoreView(filled<FloatView>(1 << 20, rank));
    };
    const StoreView out = sent_by(world_rank());                            // (2^20)
    const StoreView in = StoreView::allocate("p2bw::test", 1 << 20, bf16);  // (2^20)
    const auto handles = transport->post_exchange({out, partner, 1, Direction::activation},
                                                  {in, partner, 1, Direction::activation});
    transport->wait_all("the exchange with the partner");
    (void)handles;
    EXPECT_EQ(values(in), values(sent_by(partner))) << (bf16 ? "bf16" : "float");
  }
  const DoubleView ones = filled<DoubleView>(1, 1.0);  // (1)
  collectives->wait(collectives->post_sum(ones, Group::world, "the world sum"));
  EXPECT_EQ(values(ones), std::vector<double>{static_cast<double>(world_size())});
}

}  // namespace
}  // namespace p2bw::comm
