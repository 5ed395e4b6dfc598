// Finds and opens cuBLAS at run time; see cublas_loader.h.
#include "cuda/cublas_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace tera {
namespace cuda {
namespace {

struct Loaded {
  CublasApi api;
  bool ok = false;
  std::string error;
};

std::string dlerrorText() {
  const char* text = dlerror();
  return text ? text : "unknown dlopen error";
}

// cuBLAS needs cublasLt from the same release; when we are given a full path,
// preload the cublasLt beside it so its directory need not be on the loader path.
void preloadCublasLt(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return;
  const std::string file = path.substr(slash + 1);
  const size_t at = file.find("libcublas.so");
  if (at != 0) return;
  const std::string lt = path.substr(0, slash + 1) + "libcublasLt.so" + file.substr(12);
  dlopen(lt.c_str(), RTLD_NOW | RTLD_GLOBAL);  // best effort; cuBLAS's own error says the rest
  dlerror();
}

template <typename Fn>
bool bind(void* library, const char* symbol, Fn* target, std::string* error) {
  dlerror();
  void* address = dlsym(library, symbol);
  if (!address) {
    *error = "symbol " + std::string(symbol) + " not found: " + dlerrorText();
    return false;
  }
  *target = reinterpret_cast<Fn>(address);
  return true;
}

Loaded load() {
  Loaded result;
  std::vector<std::string> candidates;
  if (const char* path = std::getenv("TERA_CUBLAS_PATH")) {
    if (*path) candidates.push_back(path);
  }
  for (const char* name :
       {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"}) {
    candidates.push_back(name);
  }
  std::string tried;
  for (const std::string& name : candidates) {
    if (name.find('/') != std::string::npos) preloadCublasLt(name);
    void* library = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!library) {
      tried += "\n  " + name + ": " + dlerrorText();
      continue;
    }
    CublasApi api;
    std::string symbolError;
    const bool bound =
        bind(library, "cublasCreate_v2", &api.create, &symbolError) &&
        bind(library, "cublasDestroy_v2", &api.destroy, &symbolError) &&
        bind(library, "cublasSetStream_v2", &api.setStream, &symbolError) &&
        bind(library, "cublasSgemm_v2", &api.sgemm, &symbolError) &&
        bind(library, "cublasSgemmStridedBatched", &api.sgemmStridedBatched, &symbolError);
    if (!bound) {
      tried += "\n  " + name + ": " + symbolError;
      dlclose(library);
      continue;
    }
    api.library = name;
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(api.create), &info) && info.dli_fname) {
      api.library = info.dli_fname;
    }
    result.api = api;
    result.ok = true;
    return result;
  }
  result.error =
      "cuBLAS could not be loaded (set TERA_CUBLAS_PATH to a libcublas.so.* file, or put its "
      "directory on LD_LIBRARY_PATH); tried:" +
      tried;
  return result;
}

}  // namespace

const CublasApi* loadCublas(std::string* error) {
  static std::once_flag once;
  static Loaded* loaded = nullptr;
  std::call_once(once, [] { loaded = new Loaded(load()); });  // never freed: used until exit
  if (!loaded->ok) {
    if (error) *error = loaded->error;
    return nullptr;
  }
  return &loaded->api;
}

const char* cublasStatusName(int status) {
  switch (status) {
    case 0:
      return "CUBLAS_STATUS_SUCCESS";
    case 1:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case 8:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      return "unknown cuBLAS status";
  }
}

}  // namespace cuda
}  // namespace tera
