// Planted bugs, to prove the harness catches them: an op table that forwards to a real backend
// but gets one op slightly wrong, the way a kernel bug would (an ignored device count, a swapped
// scale, one head or one row short, a window one key wider...). `ops_parity_test --mutants`
// runs each against the op's cases and fails unless every one is caught.
#pragma once
#include <string>
#include <vector>

#include "backend.h"

namespace parity {

struct Mutation {
  const char* name;
  const char* groups;  // the op groups whose cases must catch it (prefix of the group name)
};

inline const std::vector<Mutation>& mutations() {
  static const std::vector<Mutation> all = {
      {"matmul-ignores-count", "matmul "},
      {"matmul-swaps-w-and-1-w", "matmul "},
      {"matmul-drops-bias", "matmul "},
      {"matmul2-swaps-outputs", "matmul2"},
      {"gateup-swaps-gate-and-up", "matmulGateUp"},
      {"rmsnorm-wrong-eps", "rmsnorm"},
      {"rmsnorm-ignores-indices", "rmsnorm"},
      {"embed-one-row-short", "embed"},
      {"tanh-one-column-short", "tanhRows"},
      {"kv-write-wrong-layer", "kvWriteRope"},
      {"rope-one-head-short", "ropeRows"},
      {"attention-window-one-wider", "attention"},
      {"attention-ignores-indices", "attention"},
      {"threshold-shifted", "routeThreshold"},
      {"argmax-one-row-short", "routeArgmax"},
      {"compact-no-skip-list", "compact"},
      {"sample-one-row-short", "sample"},
      {"sample-no-penalties", "sample"},
      {"copy-one-byte-short", "memory"},
  };
  return all;
}

class MutantOps final : public dg::Ops {
 public:
  MutantOps(dg::Ops* inner, std::string mutation) : in_(inner), m_(std::move(mutation)) {}
  const char* name() const override { return "mutant"; }
  void* alloc(size_t b) override { return in_->alloc(b); }
  void release(void* p) override { in_->release(p); }
  void copy(void* d, const void* s, size_t b) override { in_->copy(d, s, is("copy-one-byte-short") && b ? b - 1 : b); }
  void upload(void* d, const void* h, size_t b) override { in_->upload(d, h, b); }
  void download(void* h, const void* s, size_t b) override { in_->download(h, s, b); }
  void sync() override { in_->sync(); }
  dg::Weight prepareWeight(const dg::Weight& w) override { return in_->prepareWeight(w); }
  void embed(float* x, const int32_t* t, int64_t rows, const dg::Weight& w) override {
    in_->embed(x, t, is("embed-one-row-short") && rows ? rows - 1 : rows, w);
  }
  void rmsnorm(float* o, const float* x, dg::RowSet r, int64_t d, const float* w, float eps) override {
    if (is("rmsnorm-ignores-indices")) r.idx = nullptr;
    in_->rmsnorm(o, x, r, d, w, is("rmsnorm-wrong-eps") ? eps * 1000 : eps);
  }
  void matmul(float* o, int64_t ldo, const float* x, int64_t ldx, dg::RowSet r, const dg::Weight& W, const float* b,
              dg::Epilogue ep) override {
    if (is("matmul-ignores-count")) r.count = nullptr;
    if (is("matmul-swaps-w-and-1-w") && ep.scaleMode != dg::Epilogue::One)
      ep.scaleMode = ep.scaleMode == dg::Epilogue::W ? dg::Epilogue::OneMinusW : dg::Epilogue::W;
    in_->matmul(o, ldo, x, ldx, r, W, is("matmul-drops-bias") ? nullptr : b, ep);
  }
  void matmul2(float* o0, int64_t l0, float* o1, int64_t l1, const float* x, int64_t ldx, dg::RowSet r,
               const dg::Weight& W0, const float* b0, const dg::Weight& W1, const float* b1) override {
    if (is("matmul2-swaps-outputs") && l0 == l1)
      in_->matmul2(o1, l1, o0, l0, x, ldx, r, W0, b0, W1, b1);
    else
      in_->matmul2(o0, l0, o1, l1, x, ldx, r, W0, b0, W1, b1);
  }
  void matmulGateUp(float* o, int64_t ldo, const float* x, int64_t ldx, dg::RowSet r, const dg::Weight& g,
                    const float* bg, const dg::Weight& u, const float* bu) override {
    if (is("gateup-swaps-gate-and-up"))
      in_->matmulGateUp(o, ldo, x, ldx, r, u, bu, g, bg);
    else
      in_->matmulGateUp(o, ldo, x, ldx, r, g, bg, u, bu);
  }
  void kvWriteRope(float* k, const float* v, const dg::StepRows& s, int layer, const dg::AttnShape& a,
                   const float* f) override {
    in_->kvWriteRope(k, v, s, is("kv-write-wrong-layer") ? (layer + 1) % 3 : layer, a, f);
  }
  void ropeRows(float* q, int64_t ldq, dg::RowSet r, const dg::StepRows& s, int nHeads, int hd,
                const float* f) override {
    in_->ropeRows(q, ldq, r, s, is("rope-one-head-short") && nHeads > 1 ? nHeads - 1 : nHeads, hd, f);
  }
  void attention(float* o, const float* q, dg::RowSet r, const dg::StepRows& s, int layer,
                 const dg::AttnShape& a) override {
    dg::AttnShape b = a;
    if (is("attention-window-one-wider")) b.window = a.window > 0 ? a.window + 1 : 3;
    if (is("attention-ignores-indices")) r.idx = nullptr;
    in_->attention(o, q, r, s, layer, b);
  }
  void tanhRows(float* x, dg::RowSet r, int64_t d) override {
    in_->tanhRows(x, r, is("tanh-one-column-short") && d > 1 ? d - 1 : d);
  }
  void routeThreshold(uint8_t* a, uint8_t* m, float* w, const float* l, int64_t rows, float t) override {
    in_->routeThreshold(a, m, w, l, rows, is("threshold-shifted") ? t + 0.05f : t);
  }
  void routeArgmax(uint8_t* run, const float* l, int64_t rows) override {
    in_->routeArgmax(run, l, is("argmax-one-row-short") && rows ? rows - 1 : rows);
  }
  void compact(const uint8_t* f, int64_t rows, int32_t* ri, int32_t* rc, int32_t* si, int32_t* sc) override {
    if (is("compact-no-skip-list")) si = nullptr, sc = nullptr;
    in_->compact(f, rows, ri, rc, si, sc);
  }
  void sample(int32_t* t, float* l, int64_t rows, int64_t vocab, dg::SampleRow* p,
              const dg::PenaltyToken* pen) override {
    in_->sample(t, l, is("sample-one-row-short") && rows ? rows - 1 : rows, vocab, p,
                is("sample-no-penalties") ? nullptr : pen);
  }

 private:
  bool is(const char* m) const { return m_ == m; }
  dg::Ops* in_;
  std::string m_;
};

}  // namespace parity
