// Errors the engine raises. `code` becomes the JS error's `code`, which the TypeScript side maps
// to a typed error class; `file` names the file at fault when there is one.
#pragma once
#include <stdexcept>
#include <string>

namespace dg {

struct Error : std::runtime_error {
  std::string code;
  std::string file;
  Error(std::string code_, const std::string& message, std::string file_ = "")
      : std::runtime_error(message), code(std::move(code_)), file(std::move(file_)) {}
};

// Codes shared with src/errors.ts.
constexpr const char* kErrFormat = "ERR_DEPTHGATE_MODEL_FORMAT";    // malformed checkpoint
constexpr const char* kErrIo = "ERR_DEPTHGATE_MODEL_IO";            // file cannot be opened/read
constexpr const char* kErrArg = "ERR_DEPTHGATE_INVALID_ARGUMENT";   // bad call from JS
constexpr const char* kErrMemory = "ERR_DEPTHGATE_OUT_OF_MEMORY";
constexpr const char* kErrContext = "ERR_DEPTHGATE_CONTEXT_OVERFLOW";
constexpr const char* kErrDisposed = "ERR_DEPTHGATE_DISPOSED";
constexpr const char* kErrAborted = "ERR_DEPTHGATE_ABORTED";

}  // namespace dg
