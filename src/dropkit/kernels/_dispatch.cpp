// dropkit's eager CPU dropout op in C++: the seed draw, the autograd node and the
// kernel call of dropkit._ops.apply without Python on the path.
//
// Why it exists: inside a training step the Python route (autograd.Function,
// the seed drawn with torch.randint, argument plumbing) runs on caches the
// matrix products have just evicted and costs several times the kernel itself
// (benchmarks/RESULTS.md, issue 15). Here the forward is one C++ call and the
// backward never enters Python or takes the GIL: the autograd engine runs the
// node below directly.
//
// It computes exactly what the Python route computes, bit for bit
// (tests/kernels/test_dispatch.py):
// * the kernel is the one in _native.c, borrowed through the capsule
//   dropkit.kernels._native._C_API rather than compiled twice;
// * a seed that is not given is drawn from the generator as
//   torch.randint(0, 2**63 - 1, ()) draws it, with torch's own distribution
//   (uniform_int_from_to_distribution) under the generator's lock, so
//   torch.manual_seed and torch.utils.checkpoint reproduce the masks;
// * the output keeps the input's memory layout (empty_like's rule);
// * the backward applies the same mask to the gradient, through this op again,
//   so double backward sees it too.
//
// Unlike _native.c it is compiled against torch's headers, so a build serves
// only the torch it was built with: dropkit.kernels calls init() (which nothing
// else here runs before) only when TORCH_VERSION is the running torch's, and keeps
// the Python route otherwise (see kernels/__init__.py).

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/DistributionsHelper.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/extension.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// _native.c's dk_c_api, layout 1.
struct NativeApi {
  int abi;
  int (*mask_scale)(const void *, void *, int64_t, int, uint64_t, uint64_t, int64_t, double, int);
};
const NativeApi *kernel = nullptr;

// _native.c's dtype codes.
int dtype_code(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return 0;
    case at::kDouble: return 1;
    case at::kHalf: return 2;
    case at::kBFloat16: return 3;
    default: return -1;
  }
}

// keep ? src * scale : 0 over a contiguous tensor into dst (which may be src), threaded
// exactly as the Python route threads it (the kernel's pool above DK_PARALLEL_MIN
// elements; torch's own threads measured no better inside a training step).
void run(const at::Tensor &src, const at::Tensor &dst, uint64_t seed, uint64_t offset,
         int64_t threshold, double scale) {
  int status = kernel->mask_scale(src.const_data_ptr(), dst.data_ptr(), src.numel(),
                                  dtype_code(src.scalar_type()), seed, offset, threshold, scale,
                                  at::get_num_threads());
  TORCH_CHECK(status == 0, "dropkit: native kernel refused its arguments (code ", status, ")");
}

at::Tensor masked(const at::Tensor &x, uint64_t seed, uint64_t offset, int64_t threshold,
                  double scale) {
  at::Tensor dense = x.contiguous();
  at::Tensor out = at::empty_like(dense);
  run(dense, out, seed, offset, threshold, scale);
  // The mask follows the logical index, so only the strides change: channels_last
  // and permuted inputs keep their layout, as torch's element-wise ops do.
  return x.is_contiguous() ? out : at::empty_like(x).copy_(out);
}

void masked_(const at::Tensor &x, uint64_t seed, uint64_t offset, int64_t threshold,
             double scale) {
  if (x.is_contiguous()) {
    run(x, x, seed, offset, threshold, scale);
    return;
  }
  at::Tensor dense = x.contiguous();
  run(dense, dense, seed, offset, threshold, scale);
  x.copy_(dense);
}

// The mask's key travels in the context as int64 bit patterns (IValue has no uint64).
void save_key(AutogradContext *ctx, uint64_t seed, uint64_t offset, int64_t threshold,
              double scale) {
  ctx->saved_data["seed"] = static_cast<int64_t>(seed);
  ctx->saved_data["offset"] = static_cast<int64_t>(offset);
  ctx->saved_data["threshold"] = threshold;
  ctx->saved_data["scale"] = scale;
}

struct MaskScale : public torch::autograd::Function<MaskScale> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, int64_t seed,
                            int64_t offset, int64_t threshold, double scale) {
    save_key(ctx, seed, offset, threshold, scale);
    return masked(x, seed, offset, threshold, scale);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads);
};

struct MaskScaleInplace : public torch::autograd::Function<MaskScaleInplace> {
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, int64_t seed,
                            int64_t offset, int64_t threshold, double scale) {
    save_key(ctx, seed, offset, threshold, scale);
    masked_(x, seed, offset, threshold, scale);
    ctx->mark_dirty({x});
    return x;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    return MaskScale::backward(ctx, std::move(grads));
  }
};

variable_list MaskScale::backward(AutogradContext *ctx, variable_list grads) {
  const at::Tensor &grad = grads[0];
  int64_t seed = ctx->saved_data["seed"].toInt();
  int64_t offset = ctx->saved_data["offset"].toInt();
  int64_t threshold = ctx->saved_data["threshold"].toInt();
  double scale = ctx->saved_data["scale"].toDouble();
  // Through the op again only when a graph is being built (create_graph=True):
  // the usual backward runs without grad mode and needs no node.
  at::Tensor grad_input = at::GradMode::is_enabled()
                              ? MaskScale::apply(grad, seed, offset, threshold, scale)
                              : masked(grad, seed, offset, threshold, scale);
  return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
}

uint64_t draw_seed(const std::optional<at::Generator> &generator) {
  auto *cpu = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(cpu->mutex_);
  // torch.randint(0, 2**63 - 1, (), dtype=torch.int64): dropkit.random.draw_seed.
  return static_cast<uint64_t>(
      at::uniform_int_from_to_distribution<int64_t>((uint64_t{1} << 63) - 1, 0)(cpu));
}

// One eager dropout call: the seed drawn when not given, then the op. Nothing (and
// no seed drawn) for an input carrying a forward-mode tangent: the Python route,
// whose Function has a jvp, serves it.
std::optional<at::Tensor> apply(const at::Tensor &x, std::optional<uint64_t> seed,
                 const std::optional<at::Generator> &generator, uint64_t offset,
                 int64_t threshold, double scale, bool inplace) {
  TORCH_CHECK(kernel != nullptr, "dropkit: _dispatch used before init()");
  TORCH_CHECK(x.device().is_cpu() && dtype_code(x.scalar_type()) >= 0,
              "dropkit: _dispatch serves CPU float32/float64/float16/bfloat16 tensors, got ",
              x.scalar_type(), " on ", x.device());
  if (x._fw_grad(/*level=*/0).defined()) return std::nullopt;
  uint64_t key = seed.has_value() ? *seed : draw_seed(generator);
  auto seed_bits = static_cast<int64_t>(key);
  auto offset_bits = static_cast<int64_t>(offset);
  if (inplace) return MaskScaleInplace::apply(x, seed_bits, offset_bits, threshold, scale);
  return MaskScale::apply(x, seed_bits, offset_bits, threshold, scale);
}

void init(py::capsule api) {
  if (std::string(api.name()) != "dropkit.kernels._native._C_API")
    throw std::invalid_argument("dropkit: _dispatch.init expects _native's _C_API capsule");
  const auto *table = static_cast<const NativeApi *>(api.get_pointer());
  if (table->abi != 1)
    throw std::invalid_argument("dropkit: _native's C API has layout " +
                                std::to_string(table->abi) + ", _dispatch expects 1");
  kernel = table;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dropkit's eager CPU dropout op in C++ (see dropkit/kernels/_dispatch.cpp)";
  m.def("init", &init, "Borrow the kernel from dropkit.kernels._native._C_API.");
  m.def("draw_seed", &draw_seed, py::arg("generator") = py::none(),
        "The seed dropkit.random.draw_seed draws, drawn in C++ (tests compare the two).");
  // Without the GIL: the kernel takes ~0.1 ms on a training step's activations.
  m.def("apply", &apply, py::arg("x"), py::arg("seed"), py::arg("generator"), py::arg("offset"),
        py::arg("threshold"), py::arg("scale"), py::arg("inplace"),
        py::call_guard<py::gil_scoped_release>(),
        "Differentiable keep ? x * scale : 0 with the mask of (seed, offset); seed None "
        "draws one from generator (None: torch's default CPU generator). None for an input "
        "with a forward-mode tangent.");
  // The torch this was compiled against: dropkit.kernels uses the module only with it.
  m.attr("TORCH_VERSION") = DK_TORCH_VERSION;
}
