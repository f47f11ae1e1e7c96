// Faults that tests inject into real runs through the environment (none is set in normal use):
//   P2BW_TEST_NONFINITE_STEP=<step>  that 1-based step gets a NaN gradient on its first parameter
//                                    (rank 0), so tests see a skipped step rotate 2bw's versions;
//   P2BW_TEST_STALL_RANK=<rank>      that world rank stops making progress for far longer than
//                                    pipeline.timeout_s: before its first batch, or with
//                                    P2BW_TEST_STALL_AT=reduction right after posting its first
//                                    batch's reductions (its peers then wait on a pending
//                                    collective); P2BW_TEST_STALL_AT=kill ends the rank there with
//                                    SIGKILL instead;
//   P2BW_TEST_LATE_UPDATE=1          the mutation "a deferred update applied one batch too late":
//                                    a compute whose version is not yet written runs on the
//                                    newest one, and the update waits for the next step action.
#pragma once

#include <cstdint>
#include <string>

namespace p2bw::pipeline::test_hooks {

std::int64_t nonfinite_step();  // -1 when unset

// Stalls (or kills) world rank `rank` when P2BW_TEST_STALL_RANK names it and P2BW_TEST_STALL_AT
// names `where` ("start" when unset).
void stall_here(int rank, const std::string& where, double timeout_s);

bool late_update();

}  // namespace p2bw::pipeline::test_hooks
