// The CPU-side proof that a GPU will not wait inside a step: a counting wrapper around the CPU
// op table records every call the engine makes. For every policy, at batch 1 and 4, a decode step
// must be exactly: one upload (the step's facts), then compute ops only (no download, no sync, no
// allocation), then one download (the plan as executed, the sampled tokens, and the logits when
// asked). Routing decisions therefore never come back to the host mid-step.
//   engine_transfers_test MODEL_DIR   (a tiny model with FlexiDepth and SkipLayer routers)
// Prints "N passed, M failed" last and exits non-zero on any failure.
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

static int passed = 0, failed = 0;
static void check(bool ok, const std::string& what) {
  if (ok) {
    passed++;
  } else {
    failed++;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// Forwards every op to the CPU backend and appends one letter per call to `log`:
// U upload, D download, S sync, A alloc, R release, Y copy, c compute.
class CountingOps final : public Ops {
 public:
  explicit CountingOps(Ops* inner) : in_(inner) {}
  std::string log;
  const char* name() const override { return "counting"; }
  void* alloc(size_t b) override { return log += 'A', in_->alloc(b); }
  void release(void* p) override { log += 'R', in_->release(p); }
  void copy(void* d, const void* s, size_t b) override { log += 'Y', in_->copy(d, s, b); }
  void upload(void* d, const void* h, size_t b) override { log += 'U', in_->upload(d, h, b); }
  void download(void* h, const void* s, size_t b) override { log += 'D', in_->download(h, s, b); }
  void sync() override { log += 'S', in_->sync(); }
  Weight prepareWeight(const Weight& w) override { return in_->prepareWeight(w); }
  void embed(float* x, const int32_t* t, int64_t r, const Weight& w) override { log += 'c', in_->embed(x, t, r, w); }
  void rmsnorm(float* o, const float* x, RowSet r, int64_t d, const float* w, float e) override {
    log += 'c', in_->rmsnorm(o, x, r, d, w, e);
  }
  void matmul(float* o, int64_t ldo, const float* x, int64_t ldx, RowSet r, const Weight& W, const float* b,
              Epilogue ep) override {
    log += 'c', in_->matmul(o, ldo, x, ldx, r, W, b, ep);
  }
  void matmul2(float* o0, int64_t l0, float* o1, int64_t l1, const float* x, int64_t ldx, RowSet r, const Weight& W0,
               const float* b0, const Weight& W1, const float* b1) override {
    log += 'c', in_->matmul2(o0, l0, o1, l1, x, ldx, r, W0, b0, W1, b1);
  }
  void matmulGateUp(float* o, int64_t ldo, const float* x, int64_t ldx, RowSet r, const Weight& g, const float* bg,
                    const Weight& u, const float* bu) override {
    log += 'c', in_->matmulGateUp(o, ldo, x, ldx, r, g, bg, u, bu);
  }
  void kvWriteRope(float* k, const float* v, const StepRows& s, int l, const AttnShape& a, const float* f) override {
    log += 'c', in_->kvWriteRope(k, v, s, l, a, f);
  }
  void ropeRows(float* q, int64_t ldq, RowSet r, const StepRows& s, int h, int d, const float* f) override {
    log += 'c', in_->ropeRows(q, ldq, r, s, h, d, f);
  }
  void attention(float* o, const float* q, RowSet r, const StepRows& s, int l, const AttnShape& a) override {
    log += 'c', in_->attention(o, q, r, s, l, a);
  }
  void tanhRows(float* x, RowSet r, int64_t d) override { log += 'c', in_->tanhRows(x, r, d); }
  void routeThreshold(uint8_t* a, uint8_t* m, float* w, const float* l, int64_t n, float t) override {
    log += 'c', in_->routeThreshold(a, m, w, l, n, t);
  }
  void routeArgmax(uint8_t* run, const float* l, int64_t n) override { log += 'c', in_->routeArgmax(run, l, n); }
  void compact(const uint8_t* f, int64_t n, int32_t* ri, int32_t* rc, int32_t* si, int32_t* sc) override {
    log += 'c', in_->compact(f, n, ri, rc, si, sc);
  }
  void sample(int32_t* t, float* l, int64_t n, int64_t v, SampleRow* p, const PenaltyToken* pen) override {
    log += 'c', in_->sample(t, l, n, v, p, pen);
  }

 private:
  std::unique_ptr<Ops> in_;
};

static size_t countOf(const std::string& s, char c) {
  size_t n = 0;
  for (char x : s) n += x == c;
  return n;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  ModelConfig cfg = tinyTestConfig();
  auto model =
      std::shared_ptr<Model>(loadModel(cfg, {std::string(argv[1]) + "/model.safetensors"}, true, nullptr).release());
  PolicySpec none, stat, d3, flexi, skip;
  stat.type = PolicySpec::Static;
  stat.skipLayers = {1};
  d3.type = PolicySpec::D3;
  d3.alpha = 0.5;
  flexi.type = PolicySpec::FlexiDepth;
  flexi.threshold = 0.5f;
  skip.type = PolicySpec::SkipLayer;
  const std::pair<const char*, PolicySpec> policies[] = {
      {"none", none}, {"static", stat}, {"d3", d3}, {"flexidepth", flexi}, {"skiplayer", skip}};
  for (DType kv : {DType::F32, DType::BF16})
    for (const auto& [name, spec] : policies)
      for (int batch : {1, 4})
        for (LogitsMode logits : {LogitsMode::None, LogitsMode::Last}) {
          auto* counting = new CountingOps(createCpuOps(2));
          Engine engine(model, std::unique_ptr<Ops>(counting), kv);
          std::vector<std::unique_ptr<Sequence>> seqs;
          for (int s = 0; s < batch; s++) seqs.push_back(engine.createSequence(200, 11 + uint64_t(s)));
          // Prefill (may allocate: caches, scratch, step buffers), then decode steps.
          std::vector<Request> reqs(static_cast<size_t>(batch));
          for (int s = 0; s < batch; s++) {
            reqs[size_t(s)].seq = seqs[size_t(s)].get();
            reqs[size_t(s)].tokens = {1, 2, 3, int32_t(4 + s)};
            reqs[size_t(s)].logits = LogitsMode::None;
            reqs[size_t(s)].sample = true;
            reqs[size_t(s)].sampling.temperature = s % 2 ? 0.8f : 0.f;
            // Penalties on half the sequences: their (id, count) lists travel in the same upload.
            if (s % 2 == 0) {
              reqs[size_t(s)].sampling.repetitionPenalty = 1.2f;
              reqs[size_t(s)].sampling.presencePenalty = 0.3f;
              reqs[size_t(s)].sampling.penaltyWindow = s == 2 ? 3 : 0;
            }
          }
          std::vector<Response> out;
          engine.forward(reqs, out, spec);
          std::string label = std::string(name) + " kv=" + dtypeName(kv) + " batch=" + std::to_string(batch) +
                              (logits == LogitsMode::Last ? " logits=last" : " logits=none");
          bool shapeOk = true, tokensOk = true;
          for (int step = 1; step <= 6; step++) {
            for (int s = 0; s < batch; s++) {
              reqs[size_t(s)].tokens = {out[size_t(s)].token};
              reqs[size_t(s)].logits = logits;
              reqs[size_t(s)].hasGenIndex = true;
              reqs[size_t(s)].genIndex = step;
            }
            counting->log.clear();
            engine.forward(reqs, out, spec);
            const std::string& log = counting->log;
            // U, then compute only, then D: nothing else, in this order.
            const bool ok = log.size() >= 3 && log.front() == 'U' && log.back() == 'D' && countOf(log, 'U') == 1 &&
                            countOf(log, 'D') == 1 && countOf(log, 'S') == 0 && countOf(log, 'A') == 0 &&
                            countOf(log, 'R') == 0;
            if (!ok) std::printf("  %s step %d: %s\n", label.c_str(), step, log.c_str());
            shapeOk = shapeOk && ok;
            for (int s = 0; s < batch; s++) {
              tokensOk = tokensOk && out[size_t(s)].token >= 0 && out[size_t(s)].token < cfg.vocab;
              if (logits == LogitsMode::Last) tokensOk = tokensOk && out[size_t(s)].logits.size() == size_t(cfg.vocab);
            }
          }
          check(shapeOk, label + ": each decode step (penalties included) is one upload, compute, one download");
          check(tokensOk, label + ": tokens (and logits) came back");
        }
  // Exact mode's step shapes in one pass: a sampled decode row and a penalised draft row under the
  // policy, and a full-depth verification of 4 rows with every logits row penalised.
  for (const auto& [name, spec] : policies) {
    auto* counting = new CountingOps(createCpuOps(2));
    Engine engine(model, std::unique_ptr<Ops>(counting), DType::F32);
    std::vector<std::unique_ptr<Sequence>> seqs;
    std::vector<Request> reqs(3);
    for (size_t s = 0; s < 3; s++) {
      seqs.push_back(engine.createSequence(200, 21 + s));
      reqs[s].seq = seqs[s].get();
      reqs[s].tokens = {1, 2, 3, int32_t(5 + s)};
      reqs[s].logits = LogitsMode::None;
    }
    std::vector<Response> out;
    engine.forward(reqs, out, spec);
    bool shapeOk = true, fullOk = true;
    // Step 0 grows the step buffers to this shape (more logits rows, penalty lists); later steps
    // of the same shape must not allocate.
    for (int step = 0; step <= 4; step++) {
      reqs[0].tokens = {int32_t(7 + step)};
      reqs[0].sample = true;
      reqs[0].sampling.temperature = 0.7f;
      reqs[0].sampling.repetitionPenalty = 1.3f;
      reqs[1].tokens = {int32_t(9 + step)};
      reqs[1].logits = LogitsMode::Last;
      reqs[1].penalizeLogits = true;
      reqs[1].sampling.presencePenalty = 0.4f;
      reqs[2].tokens = {4, 5, 6, int32_t(step)};
      reqs[2].logits = LogitsMode::All;
      reqs[2].fullDepth = true;
      reqs[2].penalizeLogits = true;
      reqs[2].sampling.frequencyPenalty = 0.2f;
      for (size_t s = 0; s < 3; s++) {
        reqs[s].hasGenIndex = s < 2;
        reqs[s].genIndex = step;
      }
      counting->log.clear();
      engine.forward(reqs, out, spec);
      const std::string& log = counting->log;
      const bool ok = log.size() >= 3 && log.front() == 'U' && log.back() == 'D' && countOf(log, 'U') == 1 &&
                      countOf(log, 'D') == 1 && countOf(log, 'S') == 0 && countOf(log, 'A') == 0 &&
                      countOf(log, 'R') == 0;
      if (step == 0) continue;
      if (!ok) std::printf("  %s mixed step %d: %s\n", name, step, log.c_str());
      shapeOk = shapeOk && ok;
      fullOk = fullOk && out[2].logits.size() == 4 * size_t(cfg.vocab) && out[1].logits.size() == size_t(cfg.vocab);
      for (uint8_t e : out[2].executed) fullOk = fullOk && e == 1;
    }
    check(shapeOk,
          std::string(name) + ": a step mixing policy, full-depth and penalised rows is one upload, one download");
    check(fullOk, std::string(name) + ": the full-depth request ran every layer and got its logits");
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
