// Memory-mapped checkpoints and SIGBUS. Reading a mapped page whose file was truncated (or
// rewritten in place) while the model is loaded raises SIGBUS, which kills the process. That
// cannot be turned into an error safely, but it must not be silent: a handler names the file and
// says why before the default action ends the process. Faults outside model mappings go to the
// handler that was installed before ours.
#pragma once
#include <cstddef>
#include <string>

namespace dg {

// Registers [base, base + size) as the mapping of `path`; installs the handler on first use.
void guardMapping(const void* base, size_t size, const std::string& path);
void unguardMapping(const void* base);

}  // namespace dg
