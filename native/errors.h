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

// A bad option value that only the engine can judge (a policy the model cannot run): `option`
// names it, e.g. "policy.start". Thrown by the addon's own code only (the CUDA library never
// throws it, so dg::Error's layout, part of the library ABI, is unchanged).
struct OptionError : Error {
  std::string option;
  OptionError(std::string option_, const std::string& message);
};

// Codes shared with src/errors.ts.
constexpr const char* kErrFormat = "ERR_DEPTHGATE_MODEL_FORMAT";      // malformed checkpoint
constexpr const char* kErrIo = "ERR_DEPTHGATE_MODEL_IO";              // file cannot be opened/read
constexpr const char* kErrArg = "ERR_DEPTHGATE_INVALID_ARGUMENT";     // malformed call from src/ (a bug)
constexpr const char* kErrOption = "ERR_DEPTHGATE_INVALID_OPTION";    // OptionError
constexpr const char* kErrUnsupported = "ERR_DEPTHGATE_UNSUPPORTED";  // valid, but not supported here
constexpr const char* kErrMemory = "ERR_DEPTHGATE_OUT_OF_MEMORY";
constexpr const char* kErrContext = "ERR_DEPTHGATE_CONTEXT_OVERFLOW";
constexpr const char* kErrDisposed = "ERR_DEPTHGATE_DISPOSED";
constexpr const char* kErrAborted = "ERR_DEPTHGATE_ABORTED";

inline OptionError::OptionError(std::string option_, const std::string& message)
    : Error(kErrOption, message), option(std::move(option_)) {}

}  // namespace dg
