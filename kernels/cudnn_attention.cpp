// cuDNN fused attention through the cuDNN frontend's SDPA graphs; see cudnn_attention.hpp.
#include "kernels/cudnn_attention.hpp"

#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>  // before the frontend, whose shim uses std::strlen without it
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>

#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#define CUDNN_FRONTEND_SKIP_JSON_LIB
#include <cudnn_frontend.h>

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the frontend calls cuDNN through this handle (dlsym)
}

namespace p2bw::kernels {
namespace {

namespace fe = cudnn_frontend;

#define P2BW_CUDNN_CUDA_CHECK(call)                                                            \
  do {                                                                                         \
    const cudaError_t p2bw_error_ = (call);                                                    \
    if (p2bw_error_ != cudaSuccess)                                                            \
      throw std::runtime_error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                               #call + " failed: " + cudaGetErrorString(p2bw_error_));         \
  } while (0)

#define P2BW_CUDNN_CHECK(call)                                                                    \
  do {                                                                                            \
    const cudnnStatus_t p2bw_status_ = (call);                                                    \
    if (p2bw_status_ != CUDNN_STATUS_SUCCESS)                                                     \
      throw std::runtime_error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " +    \
                               #call + " failed: " + fe::detail::get_error_string(p2bw_status_)); \
  } while (0)

#define P2BW_FE_CHECK(call)                                                                    \
  do {                                                                                         \
    fe::error_t p2bw_fe_ = (call);                                                             \
    if (!p2bw_fe_.is_good())                                                                   \
      throw std::runtime_error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                               #call + " failed: " + p2bw_fe_.get_message());                  \
  } while (0)

// The tensors' ids in the graphs' variant packs.
enum Uid : std::int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

struct Shape {
  int B, T, NH, hs;
  bool causal, backward;
  bool operator<(const Shape& o) const {
    return std::tie(B, T, NH, hs, causal, backward) <
           std::tie(o.B, o.T, o.NH, o.hs, o.causal, o.backward);
  }
};

struct Built {
  std::shared_ptr<fe::graph::Graph> graph;  // null when the shape is unsupported
  std::int64_t workspace_bytes = 0;
  std::string error;  // why it is unsupported
};

// (B, NH, T, hs) views of p2bw's (B, T, rowC) buffers, head h at channels [h*hs, (h+1)*hs).
std::vector<std::int64_t> dims(const Shape& s, std::int64_t last) {
  return {s.B, s.NH, s.T, last};
}
std::vector<std::int64_t> strides(const Shape& s, std::int64_t row) {
  return {static_cast<std::int64_t>(s.T) * row, s.hs, row, 1};
}

fe::graph::Tensor_attributes tensor(const char* name, Uid uid, const Shape& s, std::int64_t row) {
  return fe::graph::Tensor_attributes()
      .set_name(name)
      .set_uid(uid)
      .set_dim(dims(s, s.hs))
      .set_stride(strides(s, row));
}

fe::graph::Tensor_attributes stats_tensor(const Shape& s) {  // (B, NH, T, 1) float
  return fe::graph::Tensor_attributes()
      .set_name("lse")
      .set_uid(kStats)
      .set_dim(dims(s, 1))
      .set_stride({static_cast<std::int64_t>(s.NH) * s.T, s.T, 1, 1})
      .set_data_type(fe::DataType_t::FLOAT);
}

std::shared_ptr<fe::graph::Graph> new_graph() {
  auto graph = std::make_shared<fe::graph::Graph>();
  graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return graph;
}

// q, k and v, read in place from the fused projection (B, T, 3C).
struct QkvTensors {
  std::shared_ptr<fe::graph::Tensor_attributes> q, k, v;
};
QkvTensors qkv_tensors(fe::graph::Graph& graph, const Shape& s) {
  const std::int64_t C3 = 3 * static_cast<std::int64_t>(s.NH) * s.hs;
  return {graph.tensor(tensor("q", kQ, s, C3)), graph.tensor(tensor("k", kK, s, C3)),
          graph.tensor(tensor("v", kV, s, C3))};
}

// The scale 1/sqrt(hs) and, for GPT, the causal mask (key j <= query i).
template <class Options>
Options& scaled_and_masked(Options& options, const Shape& s) {
  options.set_attn_scale(1.0f / std::sqrt(static_cast<float>(s.hs)));
  if (s.causal)
    options.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
        .set_diagonal_band_right_bound(0);
  return options;
}

std::shared_ptr<fe::graph::Graph> forward_graph(const Shape& s) {
  auto graph = new_graph();
  const std::int64_t C = static_cast<std::int64_t>(s.NH) * s.hs;
  const QkvTensors in = qkv_tensors(*graph, s);
  auto options =
      fe::graph::SDPA_attributes().set_name("p2bw::attention_forward").set_generate_stats(true);
  auto [o, stats] = graph->sdpa(in.q, in.k, in.v, scaled_and_masked(options, s));
  o->set_output(true).set_uid(kO).set_dim(dims(s, s.hs)).set_stride(strides(s, C));
  const fe::graph::Tensor_attributes lse = stats_tensor(s);
  stats->set_output(true)
      .set_uid(kStats)
      .set_data_type(fe::DataType_t::FLOAT)
      .set_dim(lse.get_dim())
      .set_stride(lse.get_stride());
  return graph;
}

std::shared_ptr<fe::graph::Graph> backward_graph(const Shape& s) {
  auto graph = new_graph();
  const std::int64_t C = static_cast<std::int64_t>(s.NH) * s.hs;
  const QkvTensors in = qkv_tensors(*graph, s);
  auto o = graph->tensor(tensor("out", kO, s, C));
  auto dout = graph->tensor(tensor("dout", kDO, s, C));
  auto stats = graph->tensor(stats_tensor(s));
  auto options = fe::graph::SDPA_backward_attributes()
                     .set_name("p2bw::attention_backward")
                     .set_deterministic_algorithm(true);
  auto [dq, dk, dv] =
      graph->sdpa_backward(in.q, in.k, in.v, o, dout, stats, scaled_and_masked(options, s));
  dq->set_output(true).set_uid(kDQ).set_dim(dims(s, s.hs)).set_stride(strides(s, 3 * C));
  dk->set_output(true).set_uid(kDK).set_dim(dims(s, s.hs)).set_stride(strides(s, 3 * C));
  dv->set_output(true).set_uid(kDV).set_dim(dims(s, s.hs)).set_stride(strides(s, 3 * C));
  return graph;
}

class Cudnn {
 public:
  static Cudnn& instance() {
    static Cudnn cudnn;
    return cudnn;
  }

  // "" when cuDNN is loaded and usable, else why not.
  const std::string& load() {
    if (loaded_) return load_error_;
    loaded_ = true;
    const char* choice = std::getenv("P2BW_ATTENTION");
    if (choice != nullptr && std::string(choice) == "native") {
      load_error_ = "P2BW_ATTENTION=native";
      return load_error_;
    }
    if (choice != nullptr && *choice != '\0' && std::string(choice) != "cudnn") {
      load_error_ = std::string("P2BW_ATTENTION=") + choice + " is neither native nor cudnn";
      return load_error_;
    }
    dlerror();
    void* library = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_GLOBAL);
    if (library == nullptr) {
      const char* why = dlerror();
      load_error_ = std::string("libcudnn.so.9 not loaded: ") + (why ? why : "unknown error");
      return load_error_;
    }
    fe::cudnn_dlhandle = library;
    try {
      const std::size_t v = fe::detail::get_backend_version();
      if (v < 90000) {
        load_error_ = "cuDNN " + std::to_string(v) + " is older than 9.0";
        return load_error_;
      }
      version_ = "cuDNN " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                 std::to_string(v % 100);
      P2BW_CUDNN_CHECK(fe::detail::create_handle(&handle_));
    } catch (const std::exception& e) {
      load_error_ = e.what();
    }
    return load_error_;
  }

  // The built graph of a shape (built and cached at its first use).
  const Built& built(const Shape& s) {
    auto it = graphs_.find(s);
    if (it != graphs_.end()) return it->second;
    Built b;
    try {
      auto graph = s.backward ? backward_graph(s) : forward_graph(s);
      fe::error_t status = graph->build(handle_, {fe::HeurMode_t::A});
      if (status.is_good()) {
        P2BW_FE_CHECK(graph->get_workspace_size(b.workspace_bytes));
        b.graph = graph;
      } else {
        b.error = status.get_message();
      }
    } catch (const std::exception& e) {
      b.error = e.what();
    }
    return graphs_.emplace(s, std::move(b)).first->second;
  }

  void execute(const Shape& s, cudaStream_t stream,
               std::unordered_map<fe::graph::Tensor_attributes::uid_t, void*> pack) {
    const Built& b = built(s);
    if (!b.graph) throw std::runtime_error("cuDNN attention: unsupported shape: " + b.error);
    if (b.workspace_bytes > workspace_bytes_) {
      if (workspace_ != nullptr) P2BW_CUDNN_CUDA_CHECK(cudaFree(workspace_));  // synchronises
      workspace_ = nullptr;
      P2BW_CUDNN_CUDA_CHECK(cudaMalloc(&workspace_, static_cast<std::size_t>(b.workspace_bytes)));
      workspace_bytes_ = b.workspace_bytes;
    }
    P2BW_CUDNN_CHECK(fe::detail::set_stream(handle_, stream));
    P2BW_FE_CHECK(b.graph->execute(handle_, pack, workspace_));
  }

  const std::string& version() const { return version_; }
  std::int64_t workspace_bytes() const { return workspace_bytes_; }

  void release() {
    graphs_.clear();
    if (workspace_ != nullptr) cudaFree(workspace_);
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    if (handle_ != nullptr) fe::detail::destroy_handle(handle_);
    handle_ = nullptr;
    loaded_ = false;
    load_error_.clear();
  }

  std::mutex& mutex() { return mutex_; }

 private:
  std::mutex mutex_;
  bool loaded_ = false;
  std::string load_error_, version_;
  cudnnHandle_t handle_ = nullptr;
  std::map<Shape, Built> graphs_;
  void* workspace_ = nullptr;
  std::int64_t workspace_bytes_ = 0;
};

// Whether every buffer, and with bf16 rows of C values every head's k and v block, starts on
// 16 bytes.
bool aligned(std::initializer_list<const void*> buffers, int C) {
  for (const void* p : buffers)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  return (2 * static_cast<std::int64_t>(C)) % 16 == 0;
}

Shape shape_of(int B, int T, int C, int NH, bool causal, bool backward) {
  return {B, T, NH, C / NH, causal, backward};
}

}  // namespace

std::string cudnn_attention_unavailable(int B, int T, int C, int NH, bool causal) {
  Cudnn& cudnn = Cudnn::instance();
  const std::lock_guard<std::mutex> lock(cudnn.mutex());
  if (const std::string& why = cudnn.load(); !why.empty()) return why;
  if (NH <= 0 || C % NH != 0) return "heads do not divide the hidden size";
  for (const bool backward : {false, true}) {
    const Built& b = cudnn.built(shape_of(B, T, C, NH, causal, backward));
    if (!b.graph)
      return std::string("cuDNN's ") + (backward ? "backward" : "forward") +
             " does not serve B = " + std::to_string(B) + ", T = " + std::to_string(T) +
             ", heads " + std::to_string(NH) + " of " + std::to_string(C / NH) + ": " + b.error;
  }
  return "";
}

bool cudnn_attention_forward(cudaStream_t stream, void* out, float* lse, const void* qkv, int B,
                             int T, int C, int NH, bool causal) {
  if (!aligned({out, lse, qkv}, C)) return false;
  Cudnn& cudnn = Cudnn::instance();
  const std::lock_guard<std::mutex> lock(cudnn.mutex());
  auto* base = static_cast<std::uint16_t*>(const_cast<void*>(qkv));  // bf16: 2 bytes a value
  cudnn.execute(shape_of(B, T, C, NH, causal, false), stream,
                {{kQ, base}, {kK, base + C}, {kV, base + 2 * C}, {kO, out}, {kStats, lse}});
  return true;
}

bool cudnn_attention_backward(cudaStream_t stream, void* dqkv, const void* dout, const void* qkv,
                              const void* out, const float* lse, int B, int T, int C, int NH,
                              bool causal) {
  if (!aligned({dqkv, dout, qkv, out, lse}, C)) return false;
  Cudnn& cudnn = Cudnn::instance();
  const std::lock_guard<std::mutex> lock(cudnn.mutex());
  auto* base = static_cast<std::uint16_t*>(const_cast<void*>(qkv));
  auto* grad = static_cast<std::uint16_t*>(dqkv);
  cudnn.execute(shape_of(B, T, C, NH, causal, true), stream,
                {{kQ, base},
                 {kK, base + C},
                 {kV, base + 2 * C},
                 {kO, const_cast<void*>(out)},
                 {kDO, const_cast<void*>(dout)},
                 {kStats, const_cast<float*>(lse)},
                 {kDQ, grad},
                 {kDK, grad + C},
                 {kDV, grad + 2 * C}});
  return true;
}

std::string cudnn_version() {
  Cudnn& cudnn = Cudnn::instance();
  const std::lock_guard<std::mutex> lock(cudnn.mutex());
  return cudnn.version();
}

std::string cudnn_built_against() {
  return "cuDNN " + std::to_string(CUDNN_MAJOR) + "." + std::to_string(CUDNN_MINOR) + "." +
         std::to_string(CUDNN_PATCHLEVEL) + " headers, cuDNN frontend " +
         std::to_string(CUDNN_FRONTEND_MAJOR_VERSION) + "." +
         std::to_string(CUDNN_FRONTEND_MINOR_VERSION) + "." +
         std::to_string(CUDNN_FRONTEND_PATCH_VERSION);
}

void release_cudnn_attention() {
  Cudnn& cudnn = Cudnn::instance();
  const std::lock_guard<std::mutex> lock(cudnn.mutex());
  cudnn.release();
}

std::int64_t cudnn_attention_workspace_bytes() {
  Cudnn& cudnn = Cudnn::instance();
  const std::lock_guard<std::mutex> lock(cudnn.mutex());
  return cudnn.workspace_bytes();
}

}  // namespace p2bw::kernels
