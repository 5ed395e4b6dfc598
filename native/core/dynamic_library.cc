// See dynamic_library.h.
#include "core/dynamic_library.h"

#include <dlfcn.h>

namespace tera {
namespace {

std::string dlerrorText() {
  const char* text = dlerror();
  return text ? text : "unknown dlopen error";
}

}  // namespace

std::string openLibrary(const std::vector<std::string>& candidates,
                        const std::vector<LibrarySymbol>& symbols, std::string* tried) {
  for (const std::string& name : candidates) {
    void* library = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!library) {
      *tried += "\n  " + name + ": " + dlerrorText();
      continue;
    }
    std::string missing;
    for (const LibrarySymbol& symbol : symbols) {
      dlerror();
      *symbol.address = dlsym(library, symbol.name);
      if (!*symbol.address) {
        missing = "symbol " + std::string(symbol.name) + " not found: " + dlerrorText();
        break;
      }
    }
    if (!missing.empty()) {
      *tried += "\n  " + name + ": " + missing;
      dlclose(library);
      continue;
    }
    Dl_info info;
    if (!symbols.empty() && dladdr(*symbols.front().address, &info) && info.dli_fname) {
      return info.dli_fname;
    }
    return name;
  }
  return "";
}

}  // namespace tera
