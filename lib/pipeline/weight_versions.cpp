// Weight versions and the gradient buffer by handle; see weight_versions.hpp.
#include "pipeline/weight_versions.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.hpp"

namespace p2bw::pipeline {

int sync_warmup_batches(const config::Deck& deck) {
  if (deck.pipeline.schedule != config::ScheduleKind::two_bw) return 0;
  return static_cast<int>(
      std::min<std::int64_t>(deck.pipeline.sync_warmup_steps, deck.train.steps));
}

bool has_two_bw_phase(const config::Deck& deck) {
  return deck.pipeline.schedule == config::ScheduleKind::two_bw &&
         sync_warmup_batches(deck) < deck.train.steps;
}

bool predicts_weights(const config::Deck& deck) {
  return has_two_bw_phase(deck) && deck.pipeline.weight_prediction > 0;
}

bool keeps_master(const config::Deck& deck) {
  return predicts_weights(deck) || deck.model.precision == config::Precision::bf16;
}

double prediction_gamma(const config::Deck& deck, int version) {
  return predicts_weights(deck) && version > sync_warmup_batches(deck)
             ? deck.pipeline.weight_prediction
             : 0.0;
}

WeightVersions::WeightVersions(std::int64_t floats, int buffers, bool master)
    : floats_(floats), buffers_(buffers) {
  P2BW_ASSERT(buffers >= 2 && buffers <= 3, "a stage has 2 or 3 weight and gradient buffers");
  for (int b = 0; b < buffers; ++b)
    free_.emplace_back(Kokkos::view_alloc(Kokkos::WithoutInitializing,
                                          fmt::format("p2bw::weights_{}", char('a' + b))),
                       static_cast<size_t>(floats));
  if (master)
    master_ = FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::weights_master"),
                        static_cast<size_t>(floats));
}

FloatView WeightVersions::at(int version) const {
  auto it = held_.find(version);
  if (it == held_.end())
    P2BW_INTERNAL_ERROR(fmt::format("no weight buffer holds version {} (held: {})", version,
                                    fmt::join(versions(), ", ")));
  return it->second;
}

int WeightVersions::newest() const {
  return held_.empty() ? -1 : held_.rbegin()->first;
}

int WeightVersions::oldest() const {
  return held_.empty() ? -1 : held_.begin()->first;
}

std::vector<int> WeightVersions::versions() const {
  std::vector<int> result;
  for (const auto& entry : held_) result.push_back(entry.first);
  return result;
}

FloatView WeightVersions::take_free() {
  P2BW_ASSERT(!free_.empty(), "every weight and gradient buffer is in use");
  FloatView buffer = free_.back();
  free_.pop_back();
  return buffer;
}

FloatView WeightVersions::add(int version) {
  P2BW_ASSERT(!holds(version), "a weight version is added twice");
  return held_[version] = take_free();
}

void WeightVersions::make_gradients(const Exec& exec) {
  P2BW_ASSERT(!gradients_.data(), "there is a gradient buffer already");
  gradients_ = take_free();
  Kokkos::deep_copy(exec, gradients_, 0.0f);
}

FloatView WeightVersions::detach_gradients() {
  P2BW_ASSERT(gradients_.data(), "no gradient buffer to hand out");
  FloatView buffer = gradients_;
  gradients_ = FloatView();
  return buffer;
}

void WeightVersions::hold(int version, FloatView buffer) {
  P2BW_ASSERT(!holds(version), "a weight version is written twice");
  held_[version] = buffer;
}

void WeightVersions::retire_older_than(int version) {
  const int keep = newest();
  for (auto it = held_.begin(); it != held_.end() && it->first < version;) {
    if (it->first == keep) break;
    free_.push_back(it->second);
    it = held_.erase(it);
  }
}

}  // namespace p2bw::pipeline
