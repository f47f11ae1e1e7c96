// StoreView: a flat buffer in the storage type of a run, chosen at run time by model.precision:
// float for fp32 and tf32, bf16 for bf16 (kernels/storage.hpp). Activations, activation
// gradients, stage-boundary messages and the weights used in compute are StoreViews; parameter
// gradients, the fp32 master and the optimizer state stay FloatViews. A StoreView knows its
// element type even when empty, owns its memory (or shares it, as a View does) and hands out the
// typed View (`as<float>()`, `as<bf16>()`) to the code that computes on it; the transport and
// checkpoints see bytes and widened floats.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "core/device.hpp"
#include "kernels/bf16_pack.hpp"

namespace p2bw {

using Bf16View = Kokkos::View<kernels::bf16*, Memory>;  // flat

class StoreView {
 public:
  StoreView() = default;
  StoreView(FloatView values) : f32_(std::move(values)) {}  // NOLINT: an fp32 buffer is one
  StoreView(Bf16View values) : b16_(std::move(values)), bf16_(true) {}  // NOLINT

  // `count` values of the given type, uninitialised, labelled for Kokkos's tools.
  static StoreView allocate(const std::string& label, std::int64_t count, bool bf16) {
    const auto n = static_cast<size_t>(count);
    if (bf16) return StoreView(Bf16View(Kokkos::view_alloc(Kokkos::WithoutInitializing, label), n));
    return StoreView(FloatView(Kokkos::view_alloc(Kokkos::WithoutInitializing, label), n));
  }
  // An empty buffer of the given type.
  static StoreView empty_of(bool bf16) { return bf16 ? StoreView(Bf16View()) : StoreView(); }

  bool is_bf16() const { return bf16_; }
  bool empty() const { return data() == nullptr; }
  std::int64_t size() const {
    return static_cast<std::int64_t>(bf16_ ? b16_.extent(0) : f32_.extent(0));
  }
  int value_bytes() const { return bf16_ ? 2 : 4; }
  std::int64_t bytes() const { return size() * value_bytes(); }
  void* data() const {
    return bf16_ ? static_cast<void*>(b16_.data()) : static_cast<void*>(f32_.data());
  }

  // The typed View; T must be the element type (float or kernels::bf16). An empty buffer of
  // either type gives an empty View of any (a stage without an output passes none).
  template <class T>
  Kokkos::View<T*, Memory> as() const;

  // Values [begin, end) as a StoreView sharing the memory.
  StoreView range(std::int64_t begin, std::int64_t end) const {
    const auto r = std::make_pair(begin, end);
    return bf16_ ? StoreView(Bf16View(Kokkos::subview(b16_, r)))
                 : StoreView(FloatView(Kokkos::subview(f32_, r)));
  }

 private:
  FloatView f32_;
  Bf16View b16_;
  bool bf16_ = false;
};

template <>
inline Kokkos::View<float*, Memory> StoreView::as<float>() const {
  if (bf16_ && b16_.data()) throw std::logic_error("StoreView: a bf16 buffer read as float");
  return f32_;
}
template <>
inline Kokkos::View<kernels::bf16*, Memory> StoreView::as<kernels::bf16>() const {
  if (!bf16_ && f32_.data()) throw std::logic_error("StoreView: a float buffer read as bf16");
  return b16_;
}

// dst = src, values of the same type (deep copies on `exec`, no conversion).
inline void copy(const Exec& exec, const StoreView& dst, const StoreView& src) {
  if (dst.is_bf16() != src.is_bf16() || dst.size() != src.size())
    throw std::logic_error("StoreView copy: types or sizes differ");
  if (dst.is_bf16())
    Kokkos::deep_copy(exec, dst.as<kernels::bf16>(), src.as<kernels::bf16>());
  else
    Kokkos::deep_copy(exec, dst.as<float>(), src.as<float>());
}

// dst = src as floats (exact; a copy for a float buffer).
inline void widen_into(const Exec& exec, const FloatView& dst, const StoreView& src) {
  if (dst.extent(0) != static_cast<size_t>(src.size()))
    throw std::logic_error("StoreView widen: sizes differ");
  if (src.is_bf16())
    kernels::unpack_bf16(exec, dst, src.as<kernels::bf16>(), src.size());
  else
    Kokkos::deep_copy(exec, dst, src.as<float>());
}

// dst = src in dst's type: bf16 rounds to nearest even; a copy for a float buffer (nothing when
// both are the same memory).
inline void narrow_into(const Exec& exec, const StoreView& dst, const ConstFloatView& src) {
  if (static_cast<size_t>(dst.size()) != src.extent(0))
    throw std::logic_error("StoreView narrow: sizes differ");
  if (dst.is_bf16())
    kernels::pack_bf16(exec, dst.as<kernels::bf16>(), src, dst.size());
  else if (dst.data() != src.data())
    Kokkos::deep_copy(exec, dst.as<float>(), src);
}

// bf16(src) written into the first half of `idle`'s memory, an fp32 buffer of the same count
// that holds nothing at the time (a gradient buffer between steps), and returned as a bf16
// StoreView sharing that memory: an evaluation's bf16 weights, with nothing allocated.
inline StoreView narrow_into_idle(const Exec& exec, const FloatView& idle,
                                  const ConstFloatView& src) {
  const StoreView alias(Bf16View(reinterpret_cast<kernels::bf16*>(idle.data()), idle.extent(0)));
  narrow_into(exec, alias, src);
  return alias;
}

}  // namespace p2bw
