// SS2D's two-direction selective scan as one ExecuTorch kernel: mmmobilemamba::ss2d_scan_graph.out.
//
// The computation is ss2d_scan_core.h's (shared with the onnxruntime kernel); here: reading
// ExecuTorch's tensors, refusing what the kernel does not take, and sharing the tasks (blocks of
// channels) out over ExecuTorch's thread pool.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include "ss2d_scan_core.h"

namespace mmmobilemamba {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

bool check(KernelRuntimeContext& ctx, bool ok, const char* message) {
  if (!ok) {
    ET_LOG(Error, "mmmobilemamba::ss2d_scan_graph.out: %s", message);
    ctx.fail(Error::InvalidArgument);
  }
  return ok;
}

scan_core::Dims dims_of(const Tensor& t) {
  scan_core::Dims dims{{0, 0, 0, 0}, t.dim()};
  for (int64_t i = 0; i < t.dim() && i < 4; ++i) dims.size[i] = t.size(i);
  return dims;
}

}  // namespace

Tensor& ss2d_scan_graph_out(KernelRuntimeContext& ctx, const Tensor& u, const Tensor& delta,
                            const Tensor& A, const Tensor& B, const Tensor& C,
                            const Tensor& skip, Tensor& out) {
  const bool floats = u.scalar_type() == ScalarType::Float &&
                      delta.scalar_type() == ScalarType::Float &&
                      A.scalar_type() == ScalarType::Float &&
                      B.scalar_type() == ScalarType::Float &&
                      C.scalar_type() == ScalarType::Float &&
                      skip.scalar_type() == ScalarType::Float &&
                      out.scalar_type() == ScalarType::Float;
  using executorch::runtime::tensor_is_contiguous;
  const bool contiguous = tensor_is_contiguous(u) && tensor_is_contiguous(delta) &&
                          tensor_is_contiguous(A) && tensor_is_contiguous(B) &&
                          tensor_is_contiguous(C) && tensor_is_contiguous(skip) &&
                          tensor_is_contiguous(out);
  if (!check(ctx, floats, "every tensor must be float32") ||
      !check(ctx, contiguous, "every tensor must be contiguous (the default dim order)")) {
    return out;
  }
  scan_core::Shapes shapes;
  const char* wrong = scan_core::check_shapes(dims_of(u), dims_of(delta), dims_of(A), dims_of(B),
                                              dims_of(C), dims_of(skip), &shapes);
  if (!check(ctx, wrong == nullptr, wrong) ||
      !check(ctx, out.sizes() == u.sizes(), "out must have u's shape (b, d, L)")) {
    return out;
  }
  const scan_core::Operands in{u.const_data_ptr<float>(),    delta.const_data_ptr<float>(),
                               A.const_data_ptr<float>(),    B.const_data_ptr<float>(),
                               C.const_data_ptr<float>(),    skip.const_data_ptr<float>()};
  float* y = out.mutable_data_ptr<float>();
  executorch::extension::parallel_for(
      0, scan_core::scan_tasks(shapes), 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          scan_core::run_scan_task(shapes, in, y, task);
        }
      });
  return out;
}

}  // namespace mmmobilemamba

EXECUTORCH_LIBRARY(mmmobilemamba, "ss2d_scan_graph.out", mmmobilemamba::ss2d_scan_graph_out);
