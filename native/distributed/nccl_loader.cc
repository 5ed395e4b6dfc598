// Finds and opens NCCL at run time; see nccl_loader.h.
#include "distributed/nccl_loader.h"

#include <cstdlib>
#include <mutex>
#include <vector>

#include "core/dynamic_library.h"

namespace tera {
namespace distributed {
namespace {

struct Loaded {
  NcclApi api;
  std::string error;  // empty when api is usable
};

template <typename Fn>
LibrarySymbol symbol(const char* name, Fn* target) {
  return {name, reinterpret_cast<void**>(target)};
}

Loaded load() {
  Loaded result;
  std::vector<std::string> candidates;
  if (const char* path = std::getenv("TERA_NCCL_PATH")) {
    if (*path) candidates.push_back(path);
  }
  candidates.push_back("libnccl.so.2");
  candidates.push_back("libnccl.so");
  NcclApi& api = result.api;
  std::string tried;
  api.library = openLibrary(
      candidates,
      {symbol("ncclGetVersion", &api.getVersion), symbol("ncclGetUniqueId", &api.getUniqueId),
       symbol("ncclCommInitRank", &api.commInitRank), symbol("ncclCommDestroy", &api.commDestroy),
       symbol("ncclCommAbort", &api.commAbort),
       symbol("ncclCommGetAsyncError", &api.commGetAsyncError),
       symbol("ncclGetErrorString", &api.getErrorString), symbol("ncclAllReduce", &api.allReduce),
       symbol("ncclBroadcast", &api.broadcast)},
      &tried);
  if (api.library.empty()) {
    result.error =
        "NCCL could not be loaded (set TERA_NCCL_PATH to a libnccl.so.2 file, e.g. the one in "
        "PyTorch's nvidia/nccl/lib, or put its directory on LD_LIBRARY_PATH); tried:" +
        tried;
    return result;
  }
  if (api.getVersion(&api.version) != kNcclSuccess) api.version = 0;
  return result;
}

}  // namespace

const NcclApi* loadNccl(std::string* error) {
  static std::once_flag once;
  static Loaded* loaded = nullptr;
  std::call_once(once, [] { loaded = new Loaded(load()); });  // never freed: used until exit
  if (!loaded->error.empty()) {
    if (error) *error = loaded->error;
    return nullptr;
  }
  return &loaded->api;
}

}  // namespace distributed
}  // namespace tera
