// The library's three C entry points (names looked up by native/cuda_loader.cc): the ABI
// version, the probe (which GPUs are there and whether one is usable, as JSON), and the
// constructor of a CUDA op table.
#include <cstring>
#include <string>

#include "cuda_loader.h"
#include "cuda_ops.h"
#include "json.h"

#define DG_EXPORT extern "C" __attribute__((visibility("default")))

namespace dg {
namespace cuda {
namespace {

void writeOut(char* out, size_t len, const std::string& s) {
  if (!out || len == 0) return;
  size_t n = std::min(len - 1, s.size());
  std::memcpy(out, s.data(), n);
  out[n] = 0;
}

// The kernels are built for sm_80 and newer (see CMakeLists.txt).
constexpr int kMinMajor = 8;

// The CUDA runtime is linked statically; CUDA 13 needs an NVIDIA driver of the R580 branch or newer
// (NVIDIA's CUDA Toolkit release notes, "CUDA Driver" table). Stated in the README too.
constexpr const char* kDriverFloor = "580";

std::string cudaVersionString(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// Why cudaGetDeviceCount failed, in words a user can act on: no driver at all, a driver too old for
// this runtime, or what CUDA says.
std::string deviceCountFailure(cudaError_t e, int driver, int runtime) {
  if (driver == 0) return "no NVIDIA driver found (libcuda.so.1 is not installed or cannot be loaded)";
  if (e == cudaErrorInsufficientDriver || driver < runtime)
    return "the NVIDIA driver is too old: it supports CUDA " + cudaVersionString(driver) + ", this build's CUDA " +
           cudaVersionString(runtime) + " runtime needs driver " + kDriverFloor + " or newer";
  return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e);
}

}  // namespace
}  // namespace cuda
}  // namespace dg

DG_EXPORT int dg_cuda_abi_version(void) { return DG_CUDA_ABI; }

DG_EXPORT int dg_cuda_probe(char* out, size_t len) {
  try {
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);  // 0 when no driver is installed
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    std::string versions =
        ",\"runtimeVersion\":" + std::to_string(runtime) + ",\"driverVersion\":" + std::to_string(driver);
    if (e != cudaSuccess) {
      cudaGetLastError();
      std::string reason = dg::cuda::deviceCountFailure(e, driver, runtime);
      dg::cuda::writeOut(
          out, len, "{\"available\":false,\"reason\":" + dg::jsonQuote(reason) + ",\"devices\":[]" + versions + "}");
      return 0;
    }
    std::string devices;
    bool usable = false;
    for (int i = 0; i < count; i++) {
      cudaDeviceProp p{};
      if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
        cudaGetLastError();
        continue;
      }
      if (!devices.empty()) devices += ",";
      devices += "{\"index\":" + std::to_string(i) + ",\"name\":" + dg::jsonQuote(p.name) +
                 ",\"computeCapability\":\"" + std::to_string(p.major) + "." + std::to_string(p.minor) +
                 "\",\"memoryBytes\":" + std::to_string(p.totalGlobalMem) +
                 ",\"multiprocessors\":" + std::to_string(p.multiProcessorCount) + "}";
      if (p.major >= dg::cuda::kMinMajor) usable = true;
    }
    std::string reason = count == 0 ? "no CUDA device found"
                         : usable   ? ""
                                    : "no CUDA device of compute capability 8.0 or newer (this build targets sm_80+)";
    dg::cuda::writeOut(out, len,
                       std::string("{\"available\":") + (usable ? "true" : "false") +
                           ",\"reason\":" + dg::jsonQuote(reason) + ",\"devices\":[" + devices + "]" + versions + "}");
    return usable ? 1 : 0;
  } catch (...) {
    dg::cuda::writeOut(out, len, "{\"available\":false,\"reason\":\"the CUDA probe failed\",\"devices\":[]}");
    return 0;
  }
}

DG_EXPORT dg::Ops* dg_cuda_create_ops(int device, char* err, size_t len) {
  try {
    int count = 0, runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      cudaGetLastError();
      dg::cuda::writeOut(err, len, dg::cuda::deviceCountFailure(e, driver, runtime));
      return nullptr;
    }
    if (device < 0 || device >= count) {
      dg::cuda::writeOut(
          err, len, "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " found)");
      return nullptr;
    }
    cudaDeviceProp p{};
    e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) {
      dg::cuda::writeOut(err, len, std::string("cudaGetDeviceProperties failed: ") + cudaGetErrorString(e));
      return nullptr;
    }
    if (p.major < dg::cuda::kMinMajor) {
      dg::cuda::writeOut(err, len,
                         std::string("CUDA device ") + std::to_string(device) + " (" + p.name +
                             ") has compute capability " + std::to_string(p.major) + "." + std::to_string(p.minor) +
                             "; the CUDA backend needs 8.0 or newer");
      return nullptr;
    }
    return new dg::cuda::CudaOps(device);
  } catch (const std::exception& ex) {
    dg::cuda::writeOut(err, len, ex.what());
  } catch (...) {
    dg::cuda::writeOut(err, len, "unknown error creating the CUDA backend");
  }
  return nullptr;
}
