// Opening an optional shared library at run time (dlopen) and binding the entry
// points we call, for GPU libraries the binary must not link: a machine without
// them still loads the addon, and one with them finds them where their install
// put them. Used by the NCCL loader (native/distributed/nccl_loader.cc); the
// cuBLAS loader in native/cuda predates it and could move onto it.
#pragma once

#include <string>
#include <vector>

namespace tera {

// One entry point: its exported name and where to store its address.
struct LibrarySymbol {
  const char* name;
  void** address;
};

// Tries each candidate (a file name for the loader's search path, or a path) in
// order and keeps the first that opens and exports every symbol, filling the
// addresses; the library then stays loaded until exit. Returns the file that
// was loaded (resolved to a path where the loader says), or "" with `tried`
// listing each candidate and its dlopen/dlsym error, one per line.
std::string openLibrary(const std::vector<std::string>& candidates,
                        const std::vector<LibrarySymbol>& symbols, std::string* tried);

}  // namespace tera
