// Memory-mapped checkpoints and SIGBUS. Reading a mapped page past the end of a file that was
// truncated while the model is loaded raises SIGBUS, which kills the process. (A file rewritten
// in place without getting shorter raises nothing: the mapping silently shows the new bytes.)
// The engine checks every mapped file's size and modification time before and after each pass
// and refuses a changed one with an error (TensorStore::checkUnchanged), so a fault can only
// come from a truncation during a pass. That cannot be turned into an error safely, but it must
// not be silent: a handler names the file and says why before the default action ends the
// process. Faults outside model mappings go to the handler that was installed before ours.
#pragma once
#include <cstddef>
#include <string>

namespace dg {

// Registers [base, base + size) as the mapping of `path`; installs the handler on first use.
void guardMapping(const void* base, size_t size, const std::string& path);
void unguardMapping(const void* base);

}  // namespace dg
