// Reading a sequence's KV cache back to the host, in f32: for tests that compare caches layer by
// layer (speculative decoding must leave exactly the cache of a plain full-depth run), not for
// the forward pass. It takes the engine's forward lock, so it waits for a pass in flight.
#include <mutex>

#include "engine.h"
#include "errors.h"

namespace dg {

void Engine::readKv(const Sequence& s, int layer, std::vector<float>& k, std::vector<float>& v) {
  std::lock_guard<std::mutex> lock(mu_);
  if (layer < 0 || layer >= model_->config.layers)
    throw Error(kErrArg,
                "layer " + std::to_string(layer) + " is outside 0.." + std::to_string(model_->config.layers - 1));
  const size_t width = size_t(kv_.kvWidth()), elem = dtypeSize(kv_.kv), n = size_t(s.length) * width;
  k.assign(n, 0.f);
  v.assign(n, 0.f);
  if (n == 0) return;
  std::vector<unsigned char> raw(n * elem);
  const size_t offset = size_t(layer) * size_t(s.capacity) * width * elem;  // layer stride: the capacity
  for (int which = 0; which < 2; which++) {
    ops_->download(raw.data(), static_cast<const char*>(which ? s.v : s.k) + offset, raw.size());
    toF32(which ? v.data() : k.data(), raw.data(), kv_.kv, 0, n);
  }
}

}  // namespace dg
