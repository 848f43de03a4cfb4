// Load, run and free models many times under AddressSanitizer's leak checker: good loads with
// every policy, failed loads (corrupt files, wrong configs), sequences created and dropped.
// LeakSanitizer reports anything not freed at exit; the process exits non-zero then.
//   leak_test MODEL_DIR_WITH_ROUTERS CORRUPT_FILE
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "engine.h"
#include "errors.h"
#include "model.h"
#include "tiny_config.h"

using namespace dg;

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  std::string good = std::string(argv[1]) + "/model.safetensors";
  std::string corrupt = argv[2];
  int failures = 0, runs = 0;
  for (int round = 0; round < 30; round++) {
    // A good load, sequences, forwards under every policy, then everything dropped.
    {
      auto model = std::shared_ptr<Model>(loadModel(tinyTestConfig(), {good}, true, nullptr).release());
      Engine engine(model, std::unique_ptr<Ops>(createCpuOps(2)), DType::F32);
      std::vector<std::unique_ptr<Sequence>> seqs;
      for (int s = 0; s < 3; s++) seqs.push_back(engine.createSequence(200, 7));
      PolicySpec specs[5];
      specs[1].type = PolicySpec::Static;
      specs[1].skipLayers = {1};
      specs[2].type = PolicySpec::FlexiDepth;
      specs[3].type = PolicySpec::SkipLayer;
      specs[4].type = PolicySpec::D3;
      specs[4].alpha = 0.5;
      for (auto& spec : specs) {
        std::vector<Request> reqs(2);
        reqs[0].seq = seqs[0].get();
        reqs[0].tokens = {1, 2, 3, 4, 5};
        reqs[0].logits = LogitsMode::All;
        reqs[1].seq = seqs[1].get();
        reqs[1].tokens = {9};
        reqs[1].sample = true;
        reqs[1].genIndex = 3;
        std::vector<Response> out;
        engine.forward(reqs, out, spec);
        runs++;
      }
      // Errors inside forward leave nothing behind either.
      std::vector<Request> bad(1);
      bad[0].seq = seqs[2].get();
      bad[0].tokens = std::vector<int32_t>(500, 1);  // longer than the context
      std::vector<Response> out;
      try {
        engine.forward(bad, out, PolicySpec());
      } catch (const Error&) {
        failures++;
      }
      seqs.erase(seqs.begin());  // a sequence dropped before the engine
    }
    // Failed loads: a corrupt file, a config that disagrees with the tensors, a missing file.
    try {
      loadModel(tinyTestConfig(), {corrupt}, true, nullptr);
    } catch (const Error&) {
      failures++;
    }
    try {
      ModelConfig c = tinyTestConfig();
      c.intermediate = 96;
      loadModel(c, {good}, true, nullptr);
    } catch (const Error&) {
      failures++;
    }
    try {
      loadModel(tinyTestConfig(), {good, "/nonexistent.safetensors"}, true, nullptr);
    } catch (const Error&) {
      failures++;
    }
  }
  size_t left = cpuBytesOutstanding();  // mapped buffers are invisible to LeakSanitizer
  std::printf("leak_test: %d forward passes, %d expected failures, %zu backend bytes still held\n", runs, failures,
              left);
  return failures == 30 * 4 && left == 0 ? 0 : 1;
}
