// Token + position embedding (GPT-2 / llm.c "encoder"): out[b, t, :] = wte[tok[b, t], :] +
// wpe[t, :]. Forward keeps nothing but the token ids; backward accumulates into dwte and dwpe
// without floating-point atomics, in a fixed order (bitwise reproducible, see encoder_backward),
// over the positions grouped by token (EncoderBuckets, sorted on the host when the tokens are
// loaded), never comparing pairs.
// The embeddings (weights used in compute), the output and its gradient are Store
// (kernels/storage.hpp); the parameter gradients dwte and dwpe are Real.
#pragma once

#include <algorithm>
#include <utility>
#include <vector>

#include "kernels/packed.hpp"
#include "kernels/storage.hpp"
#include "kernels/types.hpp"

namespace p2bw::kernels {

namespace detail {
// Elements [first, first + K) of out, within one row (K divides C).
template <class Real, class Store>
struct EncoderForward {
  Store* out;         // (B, T, C)
  const int* tokens;  // (B, T)
  const Store* wte;   // (Vp, C)
  const Store* wpe;   // (maxT, C)
  index_t T, C;
  template <int K>
  KOKKOS_INLINE_FUNCTION void at(index_t first) const {
    const index_t bt = first / C, c = first % C, t = bt % T;
    const Pack<Store, K> e = load_pack<K>(wte + static_cast<index_t>(tokens[bt]) * C + c);
    const Pack<Store, K> p = load_pack<K>(wpe + t * C + c);
    Pack<Store, K> y;
    for (int k = 0; k < K; ++k) {
      const Real ek = widen(e.v[k]), pk = widen(p.v[k]);
      y.v[k] = narrow<Store>(ek + pk);
    }
    store_pack<K>(out + first, y);
  }
};
}  // namespace detail

// Precondition (not checked on the device): 0 <= tokens[i] < the number of rows of wte.
template <class Real, class Store = Real, class Exec>
void encoder_forward(const Exec& exec, Flat<Store, Exec> out,  // (B, T, C)
                     ConstFlat<int, Exec> tokens,              // (B, T)
                     ConstFlat<Store, Exec> wte,               // (Vp, C)
                     ConstFlat<Store, Exec> wpe,               // (maxT, C), maxT >= T
                     int B, int T, int C) {
  const index_t BT = static_cast<index_t>(B) * T;
  detail::require_size(out, BT * C, "encoder_forward", "out");
  detail::require_size(tokens, BT, "encoder_forward", "tokens");
  detail::require_size(wpe, static_cast<index_t>(T) * C, "encoder_forward", "wpe");
  const detail::EncoderForward<Real, Store> body{
      out.data(), tokens.data(), wte.data(), wpe.data(), T, C};
  // A pack never crosses a row: packs only when the width divides C.
  constexpr int W = pack_width<Store>();
  const bool packed = C % W == 0 && detail::use_packs<Exec>(body.out, body.wte, body.wpe);
  for_each_packed<W>(exec, "p2bw::encoder_forward", BT * C, packed, body);
}

// The positions of a microbatch grouped by token (llm.c's bucketing), on the device: bucket k
// holds token token[k] at positions positions[begin[k] .. begin[k+1]) in ascending order. A
// handle, as a View is (copies share the arrays); a Cache keeps the buckets of its tokens. Made
// by EncoderBucketer from the tokens on the host, when they are loaded, so that the backward
// waits for nothing.
template <class Exec>
struct EncoderBuckets {
  using IntDeviceView = Kokkos::View<int*, typename Exec::memory_space>;
  IntDeviceView positions;  // (max_positions)
  IntDeviceView begin;      // (max_positions + 1)
  IntDeviceView token;      // (max_positions)
  int count = 0;            // buckets

  EncoderBuckets() = default;
  explicit EncoderBuckets(index_t max_positions)
      : positions("p2bw::encoder_positions", max_positions),
        begin("p2bw::encoder_bucket_begin", max_positions + 1),
        token("p2bw::encoder_bucket_token", max_positions) {}

  // The buckets of `from`, copied into these arrays (queued on exec).
  void assign(const Exec& exec, const EncoderBuckets& from) {
    Kokkos::deep_copy(exec, positions, from.positions);
    Kokkos::deep_copy(exec, begin, from.begin);
    Kokkos::deep_copy(exec, token, from.token);
    count = from.count;
  }
};

// Groups tokens held on the host into EncoderBuckets: a sort on the host, then the arrays'
// copies to the device queued on exec. Its host arrays are in HostMemory and are reused, so a
// build allocates nothing after the first. The queued copies read them after build returns (from
// pageable memory before it returns, since CUDA stages it or waits; from pinned memory later), so a
// caller with pinned HostMemory builds again only once those copies are done.
template <class Exec, class HostMemory = Kokkos::HostSpace>
class EncoderBucketer {
 public:
  explicit EncoderBucketer(index_t max_positions)
      : positions_("p2bw::encoder_positions_host", max_positions),
        begin_("p2bw::encoder_bucket_begin_host", max_positions + 1),
        token_("p2bw::encoder_bucket_token_host", max_positions) {
    pairs_.reserve(static_cast<size_t>(max_positions));
  }

  // into = the buckets of tokens[0, BT) (host memory).
  void build(const Exec& exec, const int* tokens, index_t BT, EncoderBuckets<Exec>& into) {
    detail::require(BT <= static_cast<index_t>(positions_.extent(0)) &&
                        BT <= static_cast<index_t>(into.positions.extent(0)),
                    "EncoderBucketer", "more positions than it was made for");
    pairs_.clear();
    for (index_t p = 0; p < BT; ++p) pairs_.emplace_back(tokens[p], static_cast<int>(p));
    std::sort(pairs_.begin(), pairs_.end());  // by token, then position
    int count = 0;
    for (index_t i = 0; i < BT; ++i) {
      const auto& [token, position] = pairs_[static_cast<size_t>(i)];
      if (i == 0 || token != pairs_[static_cast<size_t>(i) - 1].first) {
        token_(count) = token;
        begin_(count) = static_cast<int>(i);
        ++count;
      }
      positions_(i) = position;
    }
    begin_(count) = static_cast<int>(BT);
    auto first = [](const auto& view, index_t n) {
      return Kokkos::subview(view, std::make_pair(index_t{0}, n));
    };
    Kokkos::deep_copy(exec, first(into.positions, BT), first(positions_, BT));
    Kokkos::deep_copy(exec, first(into.begin, count + 1), first(begin_, count + 1));
    Kokkos::deep_copy(exec, first(into.token, count), first(token_, count));
    into.count = count;
  }

 private:
  using HostInts = Kokkos::View<int*, HostMemory>;
  HostInts positions_, begin_, token_;  // (max_positions), (max_positions + 1), (max_positions)
  std::vector<std::pair<int, int>> pairs_;
};

// dwte[v, :] += dout[p, :] for every position p with tokens[p] == v, and dwpe[t, :] += sum over b
// of dout[b, t, :], from positions grouped by token.
// Determinism: dwpe sums over b in order, one thread per (t, c). For dwte, one team per bucket
// (token) adds dout[q, :] for the bucket's positions q in ascending order straight into the row
// dwte[tok, :]. Each row is owned by one team and the additions happen in position order, so
// the result equals the sequential loop over positions bit for bit, with no atomics; the work is
// O(B*T*C) after an O(B*T log(B*T)) sort on the host.
template <class Real, class Store = Real, class Exec>
void encoder_backward(const Exec& exec, Flat<Real, Exec> dwte,  // (Vp, C), accumulated
                      Flat<Real, Exec> dwpe,                    // (maxT, C), accumulated
                      ConstFlat<Store, Exec> dout,              // (B, T, C)
                      const EncoderBuckets<Exec>& buckets,      // of the tokens (B, T)
                      int B, int T, int C) {
  const index_t BT = static_cast<index_t>(B) * T;
  detail::require_size(dout, BT * C, "encoder_backward", "dout");
  detail::require_size(dwpe, static_cast<index_t>(T) * C, "encoder_backward", "dwpe");
  Kokkos::parallel_for(
      "p2bw::encoder_backward_wpe", Kokkos::RangePolicy<Exec>(exec, 0, static_cast<index_t>(T) * C),
      KOKKOS_LAMBDA(const index_t i) {
        Real sum = dwpe(i);
        for (int b = 0; b < B; ++b)
          sum += static_cast<Real>(widen(dout(b * static_cast<index_t>(T) * C + i)));
        dwpe(i) = sum;
      });
  if (buckets.count == 0) return;
  const auto positions = buckets.positions;
  const auto begin = buckets.begin;
  const auto token = buckets.token;
  Kokkos::parallel_for(
      "p2bw::encoder_backward_wte", Kokkos::TeamPolicy<Exec>(exec, buckets.count, Kokkos::AUTO),
      KOKKOS_LAMBDA(const detail::Team<Exec>& team) {
        const int k = team.league_rank();
        const index_t row = static_cast<index_t>(token(k)) * C;
        const int first = begin(k), end = begin(k + 1);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, C), [&](const int c) {
          Real sum = dwte(row + c);
          for (int i = first; i < end; ++i)
            sum += static_cast<Real>(widen(dout(static_cast<index_t>(positions(i)) * C + c)));
          dwte(row + c) = sum;
        });
      });
}

// The same with buckets made for this one call (tests; a model keeps them in each Cache).
template <class Real, class Store = Real, class Exec>
void encoder_backward(const Exec& exec, Flat<Real, Exec> dwte,  // (Vp, C), accumulated
                      Flat<Real, Exec> dwpe,                    // (maxT, C), accumulated
                      ConstFlat<Store, Exec> dout,              // (B, T, C)
                      ConstFlat<int, Exec> tokens,              // (B, T)
                      int B, int T, int C) {
  const index_t BT = static_cast<index_t>(B) * T;
  detail::require_size(tokens, BT, "encoder_backward", "tokens");
  Kokkos::View<int*, Kokkos::HostSpace> host_tokens("p2bw::encoder_tokens_host", BT);
  Kokkos::deep_copy(host_tokens, Kokkos::subview(tokens, std::make_pair(index_t{0}, BT)));
  EncoderBuckets<Exec> buckets(BT);
  EncoderBucketer<Exec>(BT).build(exec, host_tokens.data(), BT, buckets);
  encoder_backward<Real, Store>(exec, dwte, dwpe, dout, buckets, B, T, C);
}

}  // namespace p2bw::kernels
