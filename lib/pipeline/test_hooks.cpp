// Test hooks of the executor; see test_hooks.hpp.
#include "pipeline/test_hooks.hpp"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

namespace p2bw::pipeline::test_hooks {

std::int64_t nonfinite_step() {
  const char* step = std::getenv("P2BW_TEST_NONFINITE_STEP");
  return step ? std::atoll(step) : -1;
}

void stall_here(int rank, const std::string& where, double timeout_s) {
  const char* stall = std::getenv("P2BW_TEST_STALL_RANK");
  if (!stall || std::atoi(stall) != rank) return;
  const char* at = std::getenv("P2BW_TEST_STALL_AT");
  const std::string wanted = at ? at : "start";
  if (wanted == "kill" && where == "reduction") std::raise(SIGKILL);
  if (wanted != where) return;
  std::this_thread::sleep_for(std::chrono::duration<double>(3 * timeout_s + 5));
}

bool late_update() {
  const char* late = std::getenv("P2BW_TEST_LATE_UPDATE");
  return late && std::atoi(late) == 1;
}

}  // namespace p2bw::pipeline::test_hooks
