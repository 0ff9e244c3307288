// lana_trt_bench: builds a TensorRT engine from an ONNX file and times enqueueV3 on a CUDA stream.
//
// Why: a `*-trt` LUT entry should be the engine's device time, not Python's or a copy's. The
// engine is built at the requested precision, every I/O buffer is allocated and filled on the
// device before timing, and each sample is the elapsed time between two CUDA events recorded on
// the stream around one enqueueV3, so no host-device copy is inside the timed region. The
// protocol is the one in bench_common.hpp; the result is one JSON object on stdout.
//
//   lana_trt_bench --onnx op.onnx [--precision fp32|fp16] [--shape input=1x3x224x224 ...]
//                  [--workspace-mb 1024] [--device 0] [--save-engine op.engine]
//                  [--warmup-s 0.05] [--warmup-iters 5] [--min-iters 20] [--min-time-s 0.2]
//                  [--max-iters 10000] [--noise-threshold 0.1] [--retries 2] [--max-s 60]
//
// Inputs with dynamic dimensions need --shape NAME=DIMS; the engine gets one optimization profile
// fixed at that shape, which is what a LUT entry measures.

#include <NvInfer.h>
#include <NvOnnxParser.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

const char* kUsage =
    "usage: lana_trt_bench --onnx FILE.onnx [--precision fp32|fp16] [--shape NAME=1x3x224x224 ...] "
    "[--workspace-mb N] [--device N] [--save-engine FILE] [--warmup-iters N] [--warmup-s S] "
    "[--min-iters N] [--min-time-s S] [--max-iters N] [--noise-threshold F] [--retries N] [--max-s S]";

void check_cuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(what + " failed: " + cudaGetErrorString(status));
  }
}

// Passes TensorRT's warnings and errors to stderr; stdout carries only the JSON result.
class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "tensorrt: " << msg << "\n";
  }
};

// Frees a device buffer when it goes out of scope.
struct DeviceBuffer {
  void* ptr = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

size_t element_size(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kINT8: return 1;
    case nvinfer1::DataType::kBOOL: return 1;
    case nvinfer1::DataType::kUINT8: return 1;
#if NV_TENSORRT_MAJOR >= 9
    case nvinfer1::DataType::kBF16: return 2;
#endif
#if NV_TENSORRT_MAJOR >= 10
    case nvinfer1::DataType::kINT64: return 8;
#endif
    default:
      throw std::runtime_error("an I/O tensor has a data type this timer does not allocate; "
                               "export the op with float32/float16/int32/int64 inputs and outputs");
  }
}

std::string dims_to_string(const nvinfer1::Dims& dims) {
  std::string out;
  for (int i = 0; i < dims.nbDims; ++i) {
    if (i) out += "x";
    out += std::to_string(static_cast<long long>(dims.d[i]));
  }
  return out;
}

nvinfer1::Dims to_dims(const std::vector<long long>& shape) {
  nvinfer1::Dims dims{};
  if (shape.size() > static_cast<size_t>(nvinfer1::Dims::MAX_DIMS)) {
    throw lana::UsageError("shape has more dimensions than TensorRT supports");
  }
  dims.nbDims = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) dims.d[i] = static_cast<decltype(dims.d[0] + 0)>(shape[i]);
  return dims;
}

// IEEE binary16 from binary32, round to nearest even; enough for filling inputs with test data.
uint16_t float_to_half(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const int32_t exponent = static_cast<int32_t>((bits >> 23) & 0xffu) - 127 + 15;
  uint32_t mantissa = bits & 0x7fffffu;
  if (exponent <= 0) return static_cast<uint16_t>(sign);  // flush tiny values to zero
  if (exponent >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  uint32_t half = sign | (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(half);
}

// Host bytes for one input: uniform [-1, 1) floats in the tensor's type, zeros for other types.
std::vector<unsigned char> input_bytes(nvinfer1::DataType type, size_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<unsigned char> bytes(count * element_size(type), 0);
  if (type == nvinfer1::DataType::kFLOAT) {
    auto* out = reinterpret_cast<float*>(bytes.data());
    for (size_t i = 0; i < count; ++i) out[i] = dist(rng);
  } else if (type == nvinfer1::DataType::kHALF) {
    auto* out = reinterpret_cast<uint16_t*>(bytes.data());
    for (size_t i = 0; i < count; ++i) out[i] = float_to_half(dist(rng));
  }
  return bytes;
}

int run(int argc, char** argv) {
  const lana::Args args(argc, argv, kUsage);
  if (args.help()) {
    std::cout << kUsage << "\n";
    return 0;
  }
  std::vector<std::string> known = {"onnx", "precision", "shape", "workspace-mb", "device", "save-engine"};
  for (const auto& f : lana::Args::protocol_flags()) known.push_back(f);
  args.only(known);

  const std::string path = args.get("onnx", "");
  if (path.empty()) throw lana::UsageError(std::string("--onnx is required; ") + kUsage);
  if (!std::ifstream(path).good()) {
    throw lana::UsageError("ONNX file not found: " + path + "; export one with torch.onnx.export(module, x, path)");
  }
  const std::string precision = args.get("precision", "fp32");
  if (precision != "fp32" && precision != "fp16") {
    throw lana::UsageError("unknown --precision '" + precision + "'; use fp32 or fp16");
  }
  std::map<std::string, std::vector<long long>> shapes;
  for (const auto& text : args.all("shape")) {
    const auto eq = text.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw lana::UsageError("bad --shape '" + text + "'; write it as NAME=1x3x224x224");
    }
    shapes[text.substr(0, eq)] = lana::parse_shape(text.substr(eq + 1));
  }
  const long workspace_mb = args.get_long("workspace-mb", 1024);
  const int device_index = static_cast<int>(args.get_long("device", 0));
  const lana::Protocol protocol = args.protocol();

  int device_count = 0;
  check_cuda(cudaGetDeviceCount(&device_count), "cudaGetDeviceCount");
  if (device_index < 0 || device_index >= device_count) {
    throw lana::UsageError("--device " + std::to_string(device_index) + " does not exist; this machine has " +
                           std::to_string(device_count) + " CUDA device(s)");
  }
  check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
  cudaDeviceProp props{};
  check_cuda(cudaGetDeviceProperties(&props, device_index), "cudaGetDeviceProperties");

  Logger logger;
  std::unique_ptr<nvinfer1::IBuilder> builder(nvinfer1::createInferBuilder(logger));
  if (!builder) throw std::runtime_error("could not create a TensorRT builder");
#if NV_TENSORRT_MAJOR >= 10
  const nvinfer1::NetworkDefinitionCreationFlags network_flags = 0;  // explicit batch is the only mode
#else
  const auto network_flags =
      1U << static_cast<uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kEXPLICIT_BATCH);
#endif
  std::unique_ptr<nvinfer1::INetworkDefinition> network(builder->createNetworkV2(network_flags));
  std::unique_ptr<nvonnxparser::IParser> parser(nvonnxparser::createParser(*network, logger));
  if (!parser->parseFromFile(path.c_str(), static_cast<int>(nvinfer1::ILogger::Severity::kWARNING))) {
    std::string reason = "no detail from the parser";
    if (parser->getNbErrors() > 0) reason = parser->getError(0)->desc();
    throw lana::UsageError("TensorRT could not parse " + path + ": " + reason +
                           "; export it again with a supported opset (torch.onnx.export(..., opset_version=17))");
  }

  std::unique_ptr<nvinfer1::IBuilderConfig> config(builder->createBuilderConfig());
  config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, static_cast<size_t>(workspace_mb) << 20);
  if (precision == "fp16") {
    if (props.major * 10 + props.minor < 53) {
      std::cerr << "warning: this GPU has no fast fp16; the fp16 engine may fall back to fp32 kernels\n";
    }
    config->setFlag(nvinfer1::BuilderFlag::kFP16);
  }

  // Dynamic inputs get one profile pinned at the requested shape.
  std::map<std::string, nvinfer1::Dims> input_dims;
  nvinfer1::IOptimizationProfile* profile = nullptr;
  for (int i = 0; i < network->getNbInputs(); ++i) {
    nvinfer1::ITensor* input = network->getInput(i);
    const std::string name = input->getName();
    nvinfer1::Dims dims = input->getDimensions();
    bool dynamic = false;
    for (int j = 0; j < dims.nbDims; ++j) dynamic = dynamic || dims.d[j] < 0;
    const auto given = shapes.find(name);
    if (given != shapes.end()) {
      dims = to_dims(given->second);
    } else if (dynamic) {
      throw lana::UsageError("input '" + name + "' has dynamic dimensions (" + dims_to_string(dims) +
                             "); pass --shape " + name + "=1x3x224x224 with the shape to time");
    }
    if (dynamic) {
      if (!profile) profile = builder->createOptimizationProfile();
      profile->setDimensions(name.c_str(), nvinfer1::OptProfileSelector::kMIN, dims);
      profile->setDimensions(name.c_str(), nvinfer1::OptProfileSelector::kOPT, dims);
      profile->setDimensions(name.c_str(), nvinfer1::OptProfileSelector::kMAX, dims);
    }
    input_dims[name] = dims;
  }
  for (const auto& kv : shapes) {
    if (!input_dims.count(kv.first)) {
      throw lana::UsageError("--shape names '" + kv.first + "', which is not an input of " + path);
    }
  }
  if (profile) config->addOptimizationProfile(profile);

  const auto build_start = std::chrono::steady_clock::now();
  std::unique_ptr<nvinfer1::IHostMemory> plan(builder->buildSerializedNetwork(*network, *config));
  const double build_s = lana::seconds_since(build_start);
  if (!plan) throw std::runtime_error("TensorRT could not build an engine from " + path + " (see the log above)");
  const std::string engine_path = args.get("save-engine", "");
  if (!engine_path.empty()) {
    std::ofstream(engine_path, std::ios::binary).write(static_cast<const char*>(plan->data()),
                                                       static_cast<std::streamsize>(plan->size()));
  }

  std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
  std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(plan->data(), plan->size()));
  if (!engine) throw std::runtime_error("TensorRT could not deserialize the engine it just built");
  std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());
  if (!context) throw std::runtime_error("TensorRT could not create an execution context");

  // Allocate and fill every I/O buffer before timing; nothing crosses the bus in the timed loop.
  std::mt19937 rng(0);
  std::vector<std::unique_ptr<DeviceBuffer>> buffers;
  lana::JsonObject io_json;
  const int n_io = engine->getNbIOTensors();
  for (int i = 0; i < n_io; ++i) {
    const char* name = engine->getIOTensorName(i);
    if (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) {
      if (!context->setInputShape(name, input_dims.at(name))) {
        throw lana::UsageError(std::string("TensorRT rejected the shape of input '") + name + "'; check --shape");
      }
    }
  }
  for (int i = 0; i < n_io; ++i) {
    const char* name = engine->getIOTensorName(i);
    const bool is_input = engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT;
    const nvinfer1::DataType type = engine->getTensorDataType(name);
    const nvinfer1::Dims dims = context->getTensorShape(name);
    size_t count = 1;
    for (int j = 0; j < dims.nbDims; ++j) {
      if (dims.d[j] < 0) throw std::runtime_error(std::string("tensor '") + name + "' still has a dynamic shape");
      count *= static_cast<size_t>(dims.d[j]);
    }
    auto buffer = std::make_unique<DeviceBuffer>();
    const size_t bytes = std::max<size_t>(count * element_size(type), 1);
    check_cuda(cudaMalloc(&buffer->ptr, bytes), "cudaMalloc");
    if (is_input) {
      const std::vector<unsigned char> host = input_bytes(type, count, rng);
      check_cuda(cudaMemcpy(buffer->ptr, host.data(), host.size(), cudaMemcpyHostToDevice), "cudaMemcpy");
    } else {
      check_cuda(cudaMemset(buffer->ptr, 0, bytes), "cudaMemset");
    }
    if (!context->setTensorAddress(name, buffer->ptr)) {
      throw std::runtime_error(std::string("TensorRT rejected the buffer of tensor '") + name + "'");
    }
    io_json.str(name, std::string(is_input ? "input " : "output ") + dims_to_string(dims));
    buffers.push_back(std::move(buffer));
  }

  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaEvent_t start = nullptr;
  cudaEvent_t end = nullptr;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&end), "cudaEventCreate");
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");

  const lana::Measurement m = lana::measure(protocol, [&]() {
    check_cuda(cudaEventRecord(start, stream), "cudaEventRecord");
    if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed (see the log above)");
    check_cuda(cudaEventRecord(end, stream), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(end), "cudaEventSynchronize");
    float ms = 0.0f;
    check_cuda(cudaEventElapsedTime(&ms, start, end), "cudaEventElapsedTime");
    return static_cast<double>(ms);
  });

  cudaEventDestroy(start);
  cudaEventDestroy(end);
  cudaStreamDestroy(stream);

  int runtime_version = 0;
  int driver_version = 0;
  cudaRuntimeGetVersion(&runtime_version);
  cudaDriverGetVersion(&driver_version);
  const int trt_version = getInferLibVersion();  // e.g. 100700 for 10.7.0 (8601 for 8.6.1)

  lana::JsonObject out;
  lana::add_statistics(out, m, protocol);
  out.nums("samples_ms", m.samples_ms)
      .raw("threads", "null")
      .str("device", "cuda:" + std::to_string(device_index))
      .str("gpu", props.name)
      .str("backend", "tensorrt-native")
      .str("clock", "cuda_event")
      .str("onnx", path)
      .str("precision", precision)
      .object("io", io_json)
      .num("engine_build_s", build_s)
      .integer("tensorrt_version", trt_version)
      .str("tensorrt_header_version", std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) +
                                          "." + std::to_string(NV_TENSORRT_PATCH))
      .integer("cuda_runtime_version", runtime_version)
      .integer("cuda_driver_version", driver_version);
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
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
}
