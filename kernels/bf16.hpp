// bf16: the 16-bit storage type of mixed precision (bfloat16: 1 sign, 8 exponent, 7 mantissa
// bits, the upper half of an IEEE-754 float). float -> bf16 rounds to nearest, ties to even, bit
// for bit as CUDA's __float2bfloat16_rn (its host emulation in cuda_bf16.hpp, and the device's
// cvt.rn.bf16.f32 on sm_80 and later): every NaN becomes the canonical quiet NaN 0x7FFF (sign
// dropped), values from the largest bf16 plus half an ulp up round to ±inf, subnormals are kept
// (no flush to zero). bf16 -> float is exact (the bits shifted up by 16).
// Storage only: arithmetic happens in float. Kokkos 3.4 has no bhalf_t, so this is p2bw's own type
// in every build. In a CUDA build the device uses CUDA's conversion and the type converts to and
// from __nv_bfloat16 (and, with Kokkos >= 4, Kokkos::Experimental::bhalf_t) by its bits.
#pragma once

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <cstring>
#include <type_traits>

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_bf16.h>
#endif

namespace p2bw::kernels {

// IEEE-754 float <-> its bits.
KOKKOS_INLINE_FUNCTION std::uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}
KOKKOS_INLINE_FUNCTION float float_from_bits(std::uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// The bf16 bits nearest to f (ties to even); NaN -> 0x7FFF. On the host this is the emulation in
// CUDA's cuda_bf16.hpp (__internal_float2bfloat16 and __float2bfloat16_rn) written out; on the
// device it is CUDA's own conversion.
KOKKOS_INLINE_FUNCTION std::uint16_t bf16_bits_rn(float f) {
#ifdef __CUDA_ARCH__
  const __nv_bfloat16 b = __float2bfloat16_rn(f);
  return __bfloat16_as_ushort(b);
#else
  // Branch-free, so that loops over buffers vectorise: adding 0x7FFF plus the kept lowest bit
  // carries into the kept half exactly when the 16 bits rounded away are above half an ulp, or
  // at half with the kept value odd (ties to even); a carry into the exponent is right (up to
  // ±inf). Every NaN becomes 0x7FFF.
  const std::uint32_t x = float_bits(f);
  const std::uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  return static_cast<std::uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? 0x7fffu : rounded);
#endif
}

// A bf16 value. Trivially copyable, two bytes: a View<bf16*> is a buffer of raw bf16 values, the
// layout cuBLAS and NCCL read as CUDA_R_16BF / ncclBfloat16.
struct bf16 {
  std::uint16_t bits;

  bf16() = default;  // uninitialised like float; a View value-initialises to +0
  KOKKOS_INLINE_FUNCTION explicit bf16(float f) : bits(bf16_bits_rn(f)) {}
  KOKKOS_INLINE_FUNCTION explicit operator float() const {
    return float_from_bits(std::uint32_t{bits} << 16);
  }
  KOKKOS_INLINE_FUNCTION static bf16 from_bits(std::uint16_t b) {
    bf16 v;
    v.bits = b;
    return v;
  }

#ifdef KOKKOS_ENABLE_CUDA
  KOKKOS_INLINE_FUNCTION explicit bf16(__nv_bfloat16 b) : bits(__bfloat16_as_ushort(b)) {}
  KOKKOS_INLINE_FUNCTION explicit operator __nv_bfloat16() const {
    return __ushort_as_bfloat16(bits);
  }
#endif
};

// f rounded to the nearest bf16 value, as a float (exact: every bf16 is a float). NaN stays NaN
// (the canonical quiet NaN), ±inf stays ±inf.
KOKKOS_INLINE_FUNCTION float round_to_bf16(float f) {
  return static_cast<float>(bf16(f));
}

static_assert(sizeof(bf16) == 2, "bf16 is two bytes");
static_assert(std::is_trivially_copyable<bf16>::value, "bf16 is copied as raw bytes");
static_assert(std::is_trivially_default_constructible<bf16>::value, "bf16 is a plain value");
#ifdef KOKKOS_ENABLE_CUDA
static_assert(sizeof(__nv_bfloat16) == sizeof(bf16), "bf16 and __nv_bfloat16 share a layout");
#endif

#if defined(KOKKOS_ENABLE_CUDA) && KOKKOS_VERSION >= 40000
// Kokkos's own bf16 (Kokkos::Experimental::bhalf_t wraps __nv_bfloat16 on CUDA): same bits.
static_assert(sizeof(Kokkos::Experimental::bhalf_t) == sizeof(bf16),
              "bf16 and Kokkos::Experimental::bhalf_t share a layout");
KOKKOS_INLINE_FUNCTION bf16 to_bf16(Kokkos::Experimental::bhalf_t b) {
  return bf16(static_cast<__nv_bfloat16>(b));
}
KOKKOS_INLINE_FUNCTION Kokkos::Experimental::bhalf_t to_bhalf(bf16 b) {
  return Kokkos::Experimental::bhalf_t(static_cast<__nv_bfloat16>(b));
}
#endif

}  // namespace p2bw::kernels
