// lana_torch_bench: times a serialized TorchScript module (torch.jit.save) from C++.
//
// Why: a `*-torch` LUT is measured from Python, so every entry carries the interpreter's
// per-call cost. Timing the same scripted module here, with no Python in the loop, shows how
// much of an entry is that overhead. The protocol is the Python timing core's (see
// bench_common.hpp); the result is one JSON object on stdout.
//
//   lana_torch_bench --module op.pt --input 1x3x56x56 [--input ...] [--dtype float32]
//                    [--device cpu|cuda|cuda:N] [--threads 1] [--interop-threads 1]
//                    [--warmup-s 0.05] [--warmup-iters 5] [--min-iters 20] [--min-time-s 0.2]
//                    [--max-iters 10000] [--noise-threshold 0.1] [--retries 2] [--max-s 60]
//                    [--seed 0] [--jit-optimize 1] [--malloc warm|default]
//
// Heap: a small fresh process hands freed tensor memory straight back to the kernel (glibc trims
// the heap top and mmaps blocks above 128 KiB), so every iteration page-faults its activations in
// again: a 96x28x28 depthwise conv measured 5x slower than from Python for that reason alone. By
// default (--malloc warm) the timer sets glibc's mmap threshold to its 32 MiB ceiling and stops
// trimming, the steady state of a long-running process such as the Python interpreter or an
// inference server; --malloc default keeps glibc's behaviour.
//
// On CPU each sample is one steady_clock reading around forward(). On CUDA each sample is the
// elapsed time between two CUDA events recorded on the current stream around forward(); inputs
// are created on the device beforehand, so no host-device copy is inside the timed region.

#include <ATen/Parallel.h>
#include <c10/core/Event.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/utils.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/headeronly/version.h>

#include <ATen/ATen.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

const char* kUsage =
    "usage: lana_torch_bench --module FILE.pt --input 1x3x224x224 [--input ...] "
    "[--dtype float32|float16|bfloat16] [--device cpu|cuda[:N]] [--threads N] [--interop-threads N] "
    "[--warmup-s S] [--warmup-iters N] [--min-iters N] [--min-time-s S] [--max-iters N] "
    "[--noise-threshold F] [--retries N] [--max-s S] [--seed N] [--jit-optimize 0|1] "
    "[--malloc warm|default]";

#ifdef LANA_TORCH_CUDA
constexpr bool kBuiltWithCuda = true;
#else
constexpr bool kBuiltWithCuda = false;
#endif

std::string first_line(const std::string& text) {
  const auto nl = text.find('\n');
  return nl == std::string::npos ? text : text.substr(0, nl);
}

// The TorchScript interpreter puts a serialized traceback first and the actual error last.
std::string last_line(const std::string& text) {
  auto end = text.find_last_not_of(" \n\r\t");
  if (end == std::string::npos) return text;
  const auto nl = text.rfind('\n', end);
  return text.substr(nl == std::string::npos ? 0 : nl + 1, end - (nl == std::string::npos ? 0 : nl + 1) + 1);
}

// Keeps freed memory in the process (see the file comment); returns what was applied.
std::string configure_malloc(const std::string& mode) {
  if (mode == "default") return "default";
  if (mode != "warm") throw lana::UsageError("unknown --malloc '" + mode + "'; use warm or default");
#if defined(__GLIBC__)
  const bool ok = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1 &&
                  mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
  return ok ? "warm" : "default";
#else
  return "default";
#endif
}

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return "float32";
  }
}

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return at::kFloat;
  if (name == "float16" || name == "fp16" || name == "half") return at::kHalf;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  throw lana::UsageError("unknown --dtype '" + name + "'; use float32, float16 or bfloat16");
}

int run(int argc, char** argv) {
  const lana::Args args(argc, argv, kUsage);
  if (args.help()) {
    std::cout << kUsage << "\n";
    return 0;
  }
  std::vector<std::string> known = {"module", "input", "dtype", "device", "threads",
                                    "interop-threads", "seed", "jit-optimize", "malloc"};
  for (const auto& f : lana::Args::protocol_flags()) known.push_back(f);
  args.only(known);

  const std::string path = args.get("module", "");
  if (path.empty()) throw lana::UsageError(std::string("--module is required; ") + kUsage);
  if (!std::ifstream(path).good()) {
    throw lana::UsageError("module file not found: " + path +
                           "; save one with torch.jit.save(torch.jit.script(module), path)");
  }
  const std::vector<std::string> input_texts = args.all("input");
  if (input_texts.empty()) throw lana::UsageError("give at least one --input shape, e.g. --input 1x3x224x224");
  std::vector<std::vector<long long>> shapes;
  for (const auto& text : input_texts) shapes.push_back(lana::parse_shape(text));

  const long threads = args.get_long("threads", 1);
  const long interop = args.get_long("interop-threads", 1);
  if (threads < 1 || interop < 1) throw lana::UsageError("--threads and --interop-threads must be at least 1");
  const at::ScalarType dtype = parse_dtype(args.get("dtype", "float32"));
  const lana::Protocol protocol = args.protocol();
  const std::string device_text = args.get("device", "cpu");
  const bool jit_optimize = args.get_long("jit-optimize", 1) != 0;
  const std::string malloc_mode = configure_malloc(args.get("malloc", "warm"));

  // Thread pools must be sized before any parallel work starts.
  at::set_num_interop_threads(static_cast<int>(interop));
  at::set_num_threads(static_cast<int>(threads));
  torch::jit::setGraphExecutorOptimize(jit_optimize);

  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(device_text);
  } catch (const c10::Error&) {
    throw lana::UsageError("unknown --device '" + device_text + "'; use cpu, cuda or cuda:N");
  }
  if (device.is_cuda()) {
    if (!torch::cuda::is_available()) {
      throw lana::UsageError(std::string("CUDA is not available to this libtorch (built with CUDA: ") +
                             (kBuiltWithCuda ? "yes" : "no") +
                             "); use --device cpu, or rebuild against a CUDA build of torch on a GPU machine");
    }
    if (!device.has_index()) device.set_index(0);
  } else if (!device.is_cpu()) {
    throw lana::UsageError("unsupported --device '" + device_text + "'; use cpu, cuda or cuda:N");
  }
  if (device.is_cpu() && dtype == at::kHalf) {
    std::cerr << "warning: float16 on CPU is emulated by most kernels; the timing is not representative\n";
  }

  torch::jit::Module module;
  try {
    module = torch::jit::load(path, device);
  } catch (const c10::Error& e) {
    throw lana::UsageError("could not load TorchScript module " + path + ": " +
                           first_line(e.what_without_backtrace()) +
                           "; save it with torch.jit.save(torch.jit.script(module), path)");
  }
  module.eval();
  module.to(device, dtype);

  torch::NoGradGuard no_grad;
  c10::InferenceMode inference_mode;
  at::manual_seed(args.get_long("seed", 0));
  std::vector<c10::IValue> inputs;
  for (const auto& dims : shapes) {
    const std::vector<int64_t> sizes(dims.begin(), dims.end());
    inputs.emplace_back(at::randn(sizes, at::TensorOptions().dtype(dtype).device(device)));
  }

  // One forward() before timing turns a shape or dtype mismatch into a clear error.
  try {
    module.forward(inputs);
  } catch (const std::exception& e) {
    std::string shapes_text;
    for (const auto& t : input_texts) shapes_text += (shapes_text.empty() ? "" : ", ") + t;
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    throw lana::UsageError("forward() failed on inputs [" + shapes_text + "]: " +
                           last_line(c10_error ? c10_error->what_without_backtrace() : e.what()) +
                           "; pass the shapes the module expects with --input");
  }

  lana::Measurement m;
  std::string clock;
  if (device.is_cuda()) {
    // Events on the current stream: the sample is device time between the two records.
    const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    impl->setDevice(device);
    const c10::Stream stream = impl->getStream(device);
    c10::Event start(c10::DeviceType::CUDA, c10::EventFlag::BACKEND_DEFAULT);
    c10::Event end(c10::DeviceType::CUDA, c10::EventFlag::BACKEND_DEFAULT);
    impl->synchronizeDevice(device.index());
    m = lana::measure(protocol, [&]() {
      start.record(stream);
      module.forward(inputs);
      end.record(stream);
      end.synchronize();
      return start.elapsedTime(end);
    });
    clock = "cuda_event";
  } else {
    m = lana::measure(protocol, [&]() {
      const auto t0 = std::chrono::steady_clock::now();
      module.forward(inputs);
      const auto t1 = std::chrono::steady_clock::now();
      return std::chrono::duration<double, std::milli>(t1 - t0).count();
    });
    clock = "steady_clock";
  }

  lana::JsonObject out;
  lana::add_statistics(out, m, protocol);
  std::vector<std::string> shape_strings;
  for (const auto& dims : shapes) shape_strings.push_back(lana::shape_to_string(dims));
  std::string inputs_json = "[";
  for (size_t i = 0; i < shape_strings.size(); ++i) {
    inputs_json += (i ? ", " : "") + lana::JsonObject::quote(shape_strings[i]);
  }
  inputs_json += "]";
  out.nums("samples_ms", m.samples_ms)
      .integer("threads", at::get_num_threads())
      .integer("interop_threads", at::get_num_interop_threads())
      .str("device", device.str())
      .str("backend", "torchscript-native")
      .str("clock", clock)
      .str("module", path)
      .raw("inputs", inputs_json)
      .str("dtype", dtype_name(dtype))
      .boolean("inference_mode", true)
      .boolean("jit_optimize", jit_optimize)
      .str("malloc", malloc_mode)
      .str("torch_version", std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                                "." + std::to_string(TORCH_VERSION_PATCH))
      .boolean("built_with_cuda", kBuiltWithCuda);
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const lana::UsageError& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << first_line(e.what_without_backtrace()) << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << first_line(e.what()) << std::endl;
    return 1;
  }
}
