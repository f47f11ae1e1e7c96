// Weight versions and the gradient buffer by handle; see weight_versions.hpp.
#include "pipeline/weight_versions.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.hpp"

namespace p2bw::pipeline {

namespace {

// The last buffer of a free pool, taken out of it; InternalError `empty` when there is none.
template <class View>
View take_free(std::vector<View>& pool, const char* empty) {
  P2BW_ASSERT(!pool.empty(), empty);
  View buffer = pool.back();
  pool.pop_back();
  return buffer;
}

}  // namespace

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

WeightVersions::WeightVersions(std::int64_t values, int buffers, bool master, bool bf16)
    : values_(values),
      bf16_(bf16),
      version_buffers_(bf16 ? 2 : buffers),
      gradient_buffers_(bf16 ? buffers - 1 : 0) {
  P2BW_ASSERT(buffers >= 2 && buffers <= 3, "a stage has 2 or 3 weight and gradient buffers");
  P2BW_ASSERT(master || !bf16, "bf16 versions are copies of an fp32 master");
  for (int b = 0; b < version_buffers_; ++b)
    free_.push_back(
        StoreView::allocate(fmt::format("p2bw::weights_{}", char('a' + b)), values, bf16));
  for (int b = 0; b < gradient_buffers_; ++b)
    free_gradients_.emplace_back(
        Kokkos::view_alloc(Kokkos::WithoutInitializing,
                           fmt::format("p2bw::gradients_{}", char('a' + b))),
        static_cast<size_t>(values));
  if (master)
    master_ = FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, "p2bw::weights_master"),
                        static_cast<size_t>(values));
}

std::int64_t WeightVersions::weight_bytes() const {
  const int value_bytes = bf16_ ? 2 : 4;
  const int versions = bf16_ ? version_buffers_ : version_buffers_ - 1;
  return (versions * value_bytes + (master_.data() ? 4 : 0)) * values_;
}

std::int64_t WeightVersions::gradient_bytes() const {
  return (bf16_ ? gradient_buffers_ : 1) * 4 * values_;
}

StoreView WeightVersions::evaluation_weights(const Exec& exec) const {
  if (!bf16_) return StoreView(true_weights());
  P2BW_ASSERT(gradients_.data(), "a bf16 evaluation needs the idle gradient buffer");
  return narrow_into_idle(exec, gradients_, master_);
}

void WeightVersions::end_evaluation(const Exec& exec) const {
  if (bf16_) Kokkos::deep_copy(exec, gradients_, 0.0f);
}

StoreView WeightVersions::at(int version) const {
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

StoreView WeightVersions::add(int version) {
  P2BW_ASSERT(!holds(version), "a weight version is added twice");
  return held_[version] = take_free(free_, "every weight buffer is in use");
}

void WeightVersions::make_gradients(const Exec& exec) {
  P2BW_ASSERT(!gradients_.data(), "there is a gradient buffer already");
  gradients_ = bf16_ ? take_free(free_gradients_, "every gradient buffer is in use")
                     : take_free(free_, "every weight and gradient buffer is in use").as<float>();
  Kokkos::deep_copy(exec, gradients_, 0.0f);
}

FloatView WeightVersions::detach_gradients() {
  P2BW_ASSERT(gradients_.data(), "no gradient buffer to hand out");
  FloatView buffer = gradients_;
  gradients_ = FloatView();
  return buffer;
}

StoreView WeightVersions::next_version_buffer(FloatView gradients) {
  if (!bf16_) return StoreView(gradients);
  StoreView buffer = take_free(free_, "no bf16 weight buffer is free for the next version");
  free_gradients_.push_back(gradients);
  return buffer;
}

void WeightVersions::hold(int version, StoreView buffer) {
  P2BW_ASSERT(!holds(version), "a weight version is written twice");
  held_[version] = std::move(buffer);
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
