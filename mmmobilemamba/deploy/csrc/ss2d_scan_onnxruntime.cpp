// SS2D's two-direction selective scan as an onnxruntime custom op: mmmobilemamba.SS2DScan.
//
// A custom-op library: onnxruntime loads it (SessionOptions.register_custom_ops_library, or
// RegisterCustomOpsLibrary_V2 from C/C++) and calls RegisterCustomOps, which adds the domain
// "mmmobilemamba" with the op SS2DScan (inputs u, delta, A, B, C, skip; output y; float32) to the
// session's options. The computation is ss2d_scan_core.h's (shared with the ExecuTorch kernel);
// its tasks (blocks of channels) go through the session's intra-op thread pool.
//
// The library is built without onnxruntime's headers: it needs only the C API's function table,
// whose layout onnxruntime keeps stable across releases (functions are only ever appended; the
// table of API version N is a prefix of every later one). The few functions used are named
// below by their position in that table, and the custom-op description by its documented
// layout, as of API version 17 (onnxruntime 1.17), the first with KernelContext_ParallelFor.
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "ss2d_scan_core.h"

extern "C" {

// onnxruntime's opaque types: only pointers to them are passed around
struct OrtStatus;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtShapeInferContext;

typedef const void* const* OrtApiTable;  // the C API: a table of function pointers

struct OrtApiBase {
  OrtApiTable (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

// The custom-op description onnxruntime reads, up to the fields of ``version`` 17.
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp*, OrtApiTable, const OrtKernelInfo*);
  const char* (*GetName)(const OrtCustomOp*);
  const char* (*GetExecutionProviderType)(const OrtCustomOp*);
  int (*GetInputType)(const OrtCustomOp*, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp*);
  int (*GetOutputType)(const OrtCustomOp*, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp*);
  void (*KernelCompute)(void* kernel, OrtKernelContext*);
  void (*KernelDestroy)(void* kernel);
  int (*GetInputCharacteristic)(const OrtCustomOp*, size_t index);
  int (*GetOutputCharacteristic)(const OrtCustomOp*, size_t index);
  int (*GetInputMemoryType)(const OrtCustomOp*, size_t index);
  int (*GetVariadicInputMinArity)(const OrtCustomOp*);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp*);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp*);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp*);
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp*, OrtApiTable, const OrtKernelInfo*,
                               void** kernel);
  OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext*);
  OrtStatus* (*InferOutputShapeFn)(const OrtCustomOp*, OrtShapeInferContext*);
  int (*GetStartVersion)(const OrtCustomOp*);
  int (*GetEndVersion)(const OrtCustomOp*);
};

}  // extern "C"

namespace mmmobilemamba {
namespace {

constexpr uint32_t kApiVersion = 17;
constexpr int kFloat = 1;              // ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
constexpr int kInvalidArgument = 2;    // ORT_INVALID_ARGUMENT
constexpr int kRequired = 0;           // INPUT_OUTPUT_REQUIRED
constexpr int kDefaultMemory = 0;      // OrtMemTypeDefault
constexpr size_t kInputs = 6;          // u, delta, A, B, C, skip

// Positions in the C API's table of the functions used here.
enum Slot : size_t {
  kCreateStatus = 0,
  kCreateCustomOpDomain = 26,
  kCustomOpDomainAdd = 27,
  kAddCustomOpDomain = 28,
  kGetTensorMutableData = 51,
  kGetTensorElementType = 60,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorTypeAndShape = 65,
  kKernelContextGetInput = 90,
  kKernelContextGetOutput = 91,
  kReleaseTensorTypeAndShapeInfo = 99,
  kKernelContextParallelFor = 274,
};

// The table's functions, typed.
class Api {
 public:
  explicit Api(OrtApiTable table) : table_(table) {}

  OrtStatus* error(const char* message) const {
    return fn<OrtStatus* (*)(int, const char*)>(kCreateStatus)(kInvalidArgument, message);
  }
  OrtStatus* create_domain(const char* name, OrtCustomOpDomain** out) const {
    return fn<OrtStatus* (*)(const char*, OrtCustomOpDomain**)>(kCreateCustomOpDomain)(name, out);
  }
  OrtStatus* add_op(OrtCustomOpDomain* domain, const OrtCustomOp* op) const {
    return fn<OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>(kCustomOpDomainAdd)(domain,
                                                                                          op);
  }
  OrtStatus* add_domain(OrtSessionOptions* options, OrtCustomOpDomain* domain) const {
    return fn<OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>(kAddCustomOpDomain)(
        options, domain);
  }
  OrtStatus* input(OrtKernelContext* ctx, size_t index, const OrtValue** out) const {
    return fn<OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**)>(
        kKernelContextGetInput)(ctx, index, out);
  }
  OrtStatus* output(OrtKernelContext* ctx, size_t index, const int64_t* dims, size_t rank,
                    OrtValue** out) const {
    return fn<OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(
        kKernelContextGetOutput)(ctx, index, dims, rank, out);
  }
  OrtStatus* data(const OrtValue* value, void** out) const {
    // the C API reads inputs' data through the same call as outputs'
    return fn<OrtStatus* (*)(OrtValue*, void**)>(kGetTensorMutableData)(
        const_cast<OrtValue*>(value), out);
  }
  // element type and shape of ``value`` (dims->rank > 4: too many dimensions)
  OrtStatus* describe(const OrtValue* value, int* type, scan_core::Dims* dims) const {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    OrtStatus* status = fn<OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>(
        kGetTensorTypeAndShape)(value, &info);
    if (status) return status;
    size_t rank = 0;
    status = fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int*)>(kGetTensorElementType)(
        info, type);
    if (!status) {
      status = fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(
          kGetDimensionsCount)(info, &rank);
    }
    dims->rank = static_cast<int64_t>(rank);
    if (!status && rank <= 4) {
      status = fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(
          kGetDimensions)(info, dims->size, rank);
    }
    fn<void (*)(OrtTensorTypeAndShapeInfo*)>(kReleaseTensorTypeAndShapeInfo)(info);
    return status;
  }
  OrtStatus* parallel_for(OrtKernelContext* ctx, void (*body)(void*, size_t), size_t total,
                          void* data) const {
    // no batch size: onnxruntime splits the range over its threads
    return fn<OrtStatus* (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t, size_t,
                             void*)>(kKernelContextParallelFor)(ctx, body, total, 0, data);
  }

 private:
  template <typename F>
  F fn(Slot slot) const {
    return reinterpret_cast<F>(const_cast<void*>(table_[slot]));
  }
  OrtApiTable table_;
};

struct Job {
  scan_core::Shapes shapes;
  scan_core::Operands in;
  float* y;
};

void run_task(void* job, size_t task) {
  const Job& j = *static_cast<const Job*>(job);
  scan_core::run_scan_task(j.shapes, j.in, j.y, static_cast<int64_t>(task));
}

struct Kernel {
  explicit Kernel(OrtApiTable table) : api(table) {}
  Api api;
};

OrtStatus* compute(void* kernel, OrtKernelContext* ctx) {
  const Api& api = static_cast<Kernel*>(kernel)->api;
  const float* data[kInputs];
  scan_core::Dims dims[kInputs];
  for (size_t i = 0; i < kInputs; ++i) {
    const OrtValue* value = nullptr;
    int type = 0;
    void* p = nullptr;
    if (OrtStatus* status = api.input(ctx, i, &value)) return status;
    if (OrtStatus* status = api.describe(value, &type, &dims[i])) return status;
    if (type != kFloat) return api.error("mmmobilemamba.SS2DScan: every input must be float32");
    if (OrtStatus* status = api.data(value, &p)) return status;
    data[i] = static_cast<const float*>(p);
  }
  Job job{};
  if (const char* wrong = scan_core::check_shapes(dims[0], dims[1], dims[2], dims[3], dims[4],
                                                  dims[5], &job.shapes)) {
    return api.error((std::string("mmmobilemamba.SS2DScan: ") + wrong).c_str());
  }
  OrtValue* out = nullptr;
  if (OrtStatus* status = api.output(ctx, 0, dims[0].size, 3, &out)) return status;
  void* y = nullptr;
  if (OrtStatus* status = api.data(out, &y)) return status;
  job.in = scan_core::Operands{data[0], data[1], data[2], data[3], data[4], data[5]};
  job.y = static_cast<float*>(y);
  const int64_t tasks = scan_core::scan_tasks(job.shapes);
  if (tasks == 0) return nullptr;
  return api.parallel_for(ctx, run_task, static_cast<size_t>(tasks), &job);
}

OrtStatus* create_kernel(const OrtCustomOp*, OrtApiTable table, const OrtKernelInfo*,
                         void** kernel) {
  *kernel = new (std::nothrow) Kernel(table);
  return *kernel ? nullptr : Api(table).error("mmmobilemamba.SS2DScan: out of memory");
}

void destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }

OrtCustomOp make_op() {
  OrtCustomOp op{};
  op.version = kApiVersion;
  op.GetName = [](const OrtCustomOp*) { return "SS2DScan"; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* {
    return nullptr;  // the CPU provider
  };
  op.GetInputType = [](const OrtCustomOp*, size_t) { return kFloat; };
  op.GetInputTypeCount = [](const OrtCustomOp*) { return kInputs; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) { return kFloat; };
  op.GetOutputTypeCount = [](const OrtCustomOp*) { return size_t{1}; };
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return kRequired; };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return kRequired; };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return kDefaultMemory; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  op.GetStartVersion = [](const OrtCustomOp*) { return 1; };
  op.GetEndVersion = [](const OrtCustomOp*) { return 0x7fffffff; };
  return op;
}

const OrtCustomOp kScanOp = make_op();

}  // namespace
}  // namespace mmmobilemamba

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(
    OrtSessionOptions* options, const OrtApiBase* base) {
  using mmmobilemamba::Api;
  OrtApiTable table = base->GetApi(mmmobilemamba::kApiVersion);
  if (table == nullptr) {
    // an onnxruntime older than 1.17: no KernelContext_ParallelFor (API version 1 is there)
    return Api(base->GetApi(1)).error(
        "mmmobilemamba.SS2DScan needs onnxruntime 1.17 or later (C API version 17)");
  }
  const Api api(table);
  // a domain must outlive every session created with it: one per registration, kept
  static std::mutex lock;
  static std::vector<OrtCustomOpDomain*> domains;
  std::lock_guard<std::mutex> hold(lock);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = api.create_domain("mmmobilemamba", &domain)) return status;
  domains.push_back(domain);
  if (OrtStatus* status = api.add_op(domain, &mmmobilemamba::kScanOp)) return status;
  return api.add_domain(options, domain);
}
