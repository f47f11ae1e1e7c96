// cuDNN's fused flash attention (the cuDNN frontend's SDPA graphs) for bf16 storage on CUDA builds
// configured with -DP2BW_CUDNN=ON (kernels/attention.hpp dispatches to it; fp32 and TF32 stay on
// the native kernels, which cuDNN's fused attention does not serve). The layouts are p2bw's own,
// given to cuDNN as strides: q, k and v read in place from the fused projection (B, T, 3C), the
// output (B, T, C), the log-sum-exp (B, NH, T) in float, the gradients written in place into
// dqkv (B, T, 3C). Backward runs cuDNN's deterministic algorithm, so results repeat bit for bit.
// libcudnn.so.9 is loaded at the first call (dlopen): a machine without cuDNN runs the native
// kernels, and cudnn_attention_unavailable() says why.
// One cudnnHandle_t, graphs built once per (B, T, NH, hs, mask, direction) and a device workspace
// grown when a graph is built, so a steady-state step allocates nothing. Not yet run on a GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace p2bw::kernels {

// "" when cuDNN's fused attention serves this shape on this machine, else why not (cuDNN not
// found, P2BW_ATTENTION=native, or the shape or GPU unsupported): a line for the run's log.
std::string cudnn_attention_unavailable(int B, int T, int C, int NH, bool causal);

// out = softmax(mask(q k^T / sqrt(hs))) v per head; lse = log sum exp of the scaled scores.
// Returns false, having done nothing, when a buffer is not 16-byte aligned (cuDNN's tensor-core
// loads need it): the caller runs the native kernels then (same lse definition, so a backward on
// either implementation may follow a forward on the other).
bool cudnn_attention_forward(cudaStream_t stream, void* out,  // bf16 (B, T, C)
                             float* lse,                      // (B, NH, T)
                             const void* qkv,                 // bf16 (B, T, 3C)
                             int B, int T, int C, int NH, bool causal);

// dqkv (assigned) from dout, the forward's qkv, out and lse; false as forward.
bool cudnn_attention_backward(cudaStream_t stream, void* dqkv,  // bf16 (B, T, 3C)
                              const void* dout,                 // bf16 (B, T, C)
                              const void* qkv,                  // bf16 (B, T, 3C)
                              const void* out,                  // bf16 (B, T, C)
                              const float* lse,                 // (B, NH, T)
                              int B, int T, int C, int NH, bool causal);

// The cuDNN version loaded ("cuDNN 9.19.0"), or "" before the first call or without cuDNN.
std::string cudnn_version();

// What it was compiled against: "cuDNN 9.19.0 headers, cuDNN frontend 1.23.0".
std::string cudnn_built_against();

// Frees the graphs, the workspace and the handle (before Kokkos::finalize).
void release_cudnn_attention();

// The bytes of device memory cuDNN's workspace holds now (grown to the largest graph's need).
std::int64_t cudnn_attention_workspace_bytes();

}  // namespace p2bw::kernels
