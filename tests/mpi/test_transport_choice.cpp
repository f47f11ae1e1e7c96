// The choice of transport (pipeline.transport): the pure rule on synthetic GPU lists, and the
// real per-rank GPU identities gathered over MPI at 1, 2 and 4 ranks (none on host builds).
#include <gtest/gtest.h>
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <string>

#include "comm/transport_choice.hpp"
#include "core/error.hpp"
#include "mpi_world.hpp"

namespace p2bw::comm {
namespace {

using config::TransportKind;

RankGpu gpu(const std::string& uuid, const std::string& host) {
  return RankGpu{uuid, host};
}

const RankGpus kOwnGpus = {gpu("GPU-a", "n1"), gpu("GPU-b", "n1"), gpu("GPU-c", "n2"),
                           gpu("GPU-d", "n2")};

// The UserError choose_transport throws for `requested`, or "" when it throws none.
std::string refusal(TransportKind requested, const RankGpus& gpus, bool has_nccl) {
  try {
    choose_transport(requested, gpus, has_nccl, "deck.yaml:7");
  } catch (const UserError& error) {
    return error.what();
  }
  return "";
}

TEST(TransportChoice, AutoPicksNcclOnlyWhenEveryRankHasItsOwnGpu) {
  TransportChoice c = choose_transport(TransportKind::automatic, kOwnGpus, true, "deck.yaml:7");
  EXPECT_EQ(c.backend, TransportBackend::nccl);
  EXPECT_EQ(c.text(), "nccl (each of the 4 ranks has its own GPU)");

  c = choose_transport(TransportKind::automatic, {gpu("GPU-a", "n1")}, true, "");
  EXPECT_EQ(c.text(), "nccl (the rank has its own GPU)");

  // Two ranks on one GPU (same UUID): NCCL refuses such a communicator.
  c = choose_transport(TransportKind::automatic,
                       {gpu("GPU-a", "n1"), gpu("GPU-b", "n1"), gpu("GPU-b", "n1")}, true, "");
  EXPECT_EQ(c.text(), "mpi (ranks 1 and 2 share GPU GPU-b on host n1)");

  c = choose_transport(TransportKind::automatic, {gpu("GPU-a", "n1"), std::nullopt}, true, "");
  EXPECT_EQ(c.text(), "mpi (rank 1 has no GPU)");

  c = choose_transport(TransportKind::automatic, {std::nullopt, std::nullopt}, true, "");
  EXPECT_EQ(c.text(), "mpi (no rank has a GPU)");

  // The build decides first: without the NCCL transport the GPUs do not matter.
  c = choose_transport(TransportKind::automatic, kOwnGpus, false, "");
  EXPECT_EQ(c.text(), "mpi (this build has no NCCL transport)");
}

TEST(TransportChoice, RanksSharingAGpuAreCountedByUuid) {
  EXPECT_EQ(ranks_sharing_gpu(kOwnGpus, 0), 1);
  EXPECT_EQ(ranks_sharing_gpu(kOwnGpus, 3), 1);
  // gpu-check's grid: two ranks on one GPU share its memory; a third rank elsewhere does not.
  const RankGpus shared = {gpu("GPU-a", "n1"), gpu("GPU-b", "n1"), gpu("GPU-a", "n1"),
                           std::nullopt};
  EXPECT_EQ(ranks_sharing_gpu(shared, 0), 2);
  EXPECT_EQ(ranks_sharing_gpu(shared, 2), 2);
  EXPECT_EQ(ranks_sharing_gpu(shared, 1), 1);
  EXPECT_EQ(ranks_sharing_gpu(shared, 3), 1);  // no GPU: host memory, counted elsewhere
}

TEST(TransportChoice, MpiIsAlwaysPossible) {
  const TransportChoice c = choose_transport(TransportKind::mpi, kOwnGpus, true, "");
  EXPECT_EQ(c.text(), "mpi (pipeline.transport = mpi)");
  EXPECT_EQ(choose_transport(TransportKind::mpi, {std::nullopt}, false, "").backend,
            TransportBackend::mpi);
}

TEST(TransportChoice, NcclRequestedButImpossibleIsAUserError) {
  EXPECT_EQ(choose_transport(TransportKind::nccl, kOwnGpus, true, "").text(),
            "nccl (pipeline.transport = nccl; each of the 4 ranks has its own GPU)");
  EXPECT_EQ(refusal(TransportKind::nccl, {gpu("GPU-a", "n1"), gpu("GPU-a", "n1")}, true),
            "deck.yaml:7: pipeline.transport: nccl is impossible: ranks 0 and 1 share GPU GPU-a "
            "on host n1 (allowed: auto or mpi; nccl needs a build with NCCL and one GPU per rank)");
  EXPECT_EQ(refusal(TransportKind::nccl, kOwnGpus, false),
            "deck.yaml:7: pipeline.transport: nccl is impossible: this build has no NCCL transport "
            "(allowed: auto or mpi; nccl needs a build with NCCL and one GPU per rank)");
  EXPECT_NE(refusal(TransportKind::nccl, {std::nullopt, gpu("GPU-a", "n1")}, true)
                .find("nccl is impossible: rank 0 has no GPU"),
            std::string::npos);
  EXPECT_EQ(refusal(TransportKind::automatic, {std::nullopt}, true), "");
}

TEST(TransportChoice, GathersEveryRanksGpu) {
  const RankGpus gpus = gather_rank_gpus(MPI_COMM_WORLD);
  ASSERT_EQ(static_cast<int>(gpus.size()), testing::world_size());
#ifdef KOKKOS_ENABLE_CUDA
  for (const auto& g : gpus) {
    ASSERT_TRUE(g.has_value());
    EXPECT_EQ(g->uuid.rfind("GPU-", 0), 0u) << g->uuid;
    EXPECT_FALSE(g->host.empty());
  }
#else
  for (const auto& g : gpus) EXPECT_FALSE(g.has_value());
  const TransportChoice c =
      choose_transport(TransportKind::automatic, gpus, build_has_nccl(), "deck.yaml:7");
  EXPECT_EQ(c.text(), "mpi (this build has no NCCL transport)");
#endif
}

}  // namespace
}  // namespace p2bw::comm
