// Finds, loads and checks libdepthgate_cuda.so at run time (see cuda_loader.h).
#include "cuda_loader.h"
#include "json.h"

#include <cstdlib>
#include <mutex>
#include <vector>

#include "errors.h"

#if defined(__linux__)
#include <dlfcn.h>
#include <features.h>
// glibc 2.34 moved dlopen & co. into libc under a new symbol version; binding to it would raise
// the addon's glibc floor to 2.34. Bind to the original versions instead, which every glibc
// still provides (libc keeps them as compatibility symbols, libdl.so.2 has them before 2.34).
#if defined(__GLIBC__)
#if defined(__x86_64__)
#define DG_DL_VERSION "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define DG_DL_VERSION "GLIBC_2.17"
#endif
#endif
#ifdef DG_DL_VERSION
__asm__(".symver dlopen,dlopen@" DG_DL_VERSION);
__asm__(".symver dlsym,dlsym@" DG_DL_VERSION);
__asm__(".symver dlerror,dlerror@" DG_DL_VERSION);
__asm__(".symver dladdr,dladdr@" DG_DL_VERSION);
#endif
#define DG_HAVE_DLOPEN 1
#endif

namespace dg {

namespace {

const char* kLibName = "libdepthgate_cuda.so";

struct Loaded {
  bool tried = false;
  bool ok = false;
  std::string path, error;
  dg_cuda_probe_fn probe = nullptr;
  dg_cuda_create_ops_fn create = nullptr;
};

std::mutex gMu;
Loaded gLib;  // guarded by gMu; the handle is never closed, so ops and code stay valid

#ifdef DG_HAVE_DLOPEN
std::string addonDir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&probeCuda), &info) == 0 || !info.dli_fname) return "";
  std::string p = info.dli_fname;
  size_t slash = p.rfind('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}
#endif

const Loaded& load() {
  std::lock_guard<std::mutex> lock(gMu);
  if (gLib.tried) return gLib;
  gLib.tried = true;
#ifndef DG_HAVE_DLOPEN
  gLib.error = "the CUDA backend is only supported on Linux";
#else
  const char* env = std::getenv("DEPTHGATE_CUDA_LIB");
  gLib.path = env && *env ? std::string(env) : addonDir() + "/" + kLibName;
  dlerror();
  void* h = dlopen(gLib.path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    gLib.error = std::string("cannot load the CUDA backend library ") + gLib.path + ": " + (e ? e : "unknown error");
    return gLib;
  }
  auto abi = reinterpret_cast<dg_cuda_abi_version_fn>(dlsym(h, "dg_cuda_abi_version"));
  gLib.probe = reinterpret_cast<dg_cuda_probe_fn>(dlsym(h, "dg_cuda_probe"));
  gLib.create = reinterpret_cast<dg_cuda_create_ops_fn>(dlsym(h, "dg_cuda_create_ops"));
  if (!abi || !gLib.probe || !gLib.create) {
    gLib.error = "the CUDA backend library " + gLib.path + " lacks the dg_cuda_* entry points";
    return gLib;  // the handle stays open: harmless, and it keeps the cached state simple
  }
  int v = abi();
  if (v != DG_CUDA_ABI) {
    gLib.error = "the CUDA backend library " + gLib.path + " has ABI version " + std::to_string(v) +
                 " but this addon needs " + std::to_string(DG_CUDA_ABI) + " (rebuild both together)";
    return gLib;
  }
  gLib.ok = true;
#endif
  return gLib;
}

}  // namespace

CudaProbe probeCuda() {
  CudaProbe r;
  try {
    const Loaded& L = load();
    r.libraryFound = L.ok;
    r.libraryPath = L.path;
    r.error = L.error;
    if (!L.ok) {
      r.probeJson = "{\"available\":false,\"reason\":" + jsonQuote(L.error) + ",\"devices\":[]}";
      return r;
    }
    std::vector<char> buf(16384, 0);
    L.probe(buf.data(), buf.size());
    buf.back() = 0;
    r.probeJson = buf.data();
    if (r.probeJson.empty())
      r.probeJson = "{\"available\":false,\"reason\":\"the CUDA probe returned nothing\",\"devices\":[]}";
  } catch (...) {
    r.probeJson = "{\"available\":false,\"reason\":\"the CUDA probe failed\",\"devices\":[]}";
  }
  return r;
}

std::unique_ptr<Ops> createCudaOps(int device) {
  const Loaded& L = load();
  if (!L.ok) throw Error(kErrCudaUnavailable, L.error);
  char err[1024] = {0};
  Ops* ops = L.create(device, err, sizeof err);
  if (!ops) {
    err[sizeof err - 1] = 0;
    throw Error(kErrCudaUnavailable,
                std::string("the CUDA backend is unavailable: ") + (err[0] ? err : "unknown reason"));
  }
  return std::unique_ptr<Ops>(ops);
}

}  // namespace dg
