#include "addon_marshal.h"

#include <cmath>
#include <cstring>

#include "addon_dispatcher.h"
#include "errors.h"

namespace dg {

[[noreturn]] void throwArg(Napi::Env env, const std::string& message) { throw makeError(env, kErrArg, message, ""); }

int32_t* flagPointer(Napi::Value v, Napi::Reference<Napi::Value>& keep) {
  if (!v.IsTypedArray()) return nullptr;
  auto ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_int32_array || ta.ElementLength() < 1) return nullptr;
  keep = Napi::Persistent(v);
  return reinterpret_cast<int32_t*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
}

ModelConfig readConfig(Napi::Env env, Napi::Object o) {
  ModelConfig c;
  auto num = [&](const char* k) -> double {
    Napi::Value v = o.Get(k);
    if (!v.IsNumber()) throwArg(env, std::string("config.") + k + " must be a number");
    return v.As<Napi::Number>().DoubleValue();
  };
  auto boolean = [&](const char* k) -> bool {
    Napi::Value v = o.Get(k);
    if (!v.IsBoolean()) throwArg(env, std::string("config.") + k + " must be a boolean");
    return v.As<Napi::Boolean>().Value();
  };
  auto str = [&](const char* k) -> std::string {
    Napi::Value v = o.Get(k);
    if (!v.IsString()) throwArg(env, std::string("config.") + k + " must be a string");
    return v.As<Napi::String>().Utf8Value();
  };
  c.architecture = str("architecture");
  c.vocab = int(num("vocabSize"));
  c.hidden = int(num("hiddenSize"));
  c.layers = int(num("numLayers"));
  c.heads = int(num("numHeads"));
  c.kvHeads = int(num("numKvHeads"));
  c.headDim = int(num("headDim"));
  c.intermediate = int(num("intermediateSize"));
  c.maxPositions = int(num("maxPositionEmbeddings"));
  c.rmsEps = float(num("rmsNormEps"));
  c.ropeTheta = num("ropeTheta");
  c.ropeType = str("ropeType");
  c.ropeFactor = num("ropeFactor");
  c.lowFreqFactor = num("ropeLowFreqFactor");
  c.highFreqFactor = num("ropeHighFreqFactor");
  c.originalMaxPositions = int(num("ropeOriginalMaxPositions"));
  c.tiedEmbeddings = boolean("tieWordEmbeddings");
  c.qkvBias = boolean("qkvBias");
  c.oBias = boolean("oBias");
  c.mlpBias = boolean("mlpBias");
  c.slidingWindow = int(num("slidingWindow"));
  Napi::Value rl = o.Get("routingLayers");
  if (rl.IsArray()) {
    c.hasRoutingLayers = true;
    Napi::Array a = rl.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) {
      if (!a.Get(i).IsNumber()) throwArg(env, "config.routingLayers must hold layer numbers");
      c.routingLayers.push_back(a.Get(i).As<Napi::Number>().Int32Value());
    }
  }
  if (o.Get("routerReductionFactor").IsNumber()) c.routerReductionFactor = int(num("routerReductionFactor"));
  if (o.Get("projReductionFactor").IsNumber()) c.projReductionFactor = int(num("projReductionFactor"));
  if (o.Get("configFile").IsString()) c.configFile = str("configFile");
  return c;
}

namespace {

std::vector<int> intList(Napi::Env env, Napi::Value v, const char* what) {
  std::vector<int> out;
  if (v.IsUndefined()) return out;
  if (!v.IsArray()) throwArg(env, std::string(what) + " must be an array of layer numbers");
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    if (!a.Get(i).IsNumber()) throwArg(env, std::string(what) + " must be an array of layer numbers");
    out.push_back(a.Get(i).As<Napi::Number>().Int32Value());
  }
  return out;
}

}  // namespace

// {type: 'none'|'static'|'flexidepth'|'skiplayer'|'d3', ...} as normalised by src/policy.ts
PolicySpec readPolicy(Napi::Env env, Napi::Value v) {
  PolicySpec s;
  if (v.IsUndefined() || v.IsNull()) return s;
  if (!v.IsObject()) throwArg(env, "policy must be an object");
  Napi::Object o = v.As<Napi::Object>();
  std::string type = o.Get("type").IsString() ? o.Get("type").As<Napi::String>().Utf8Value() : "";
  // An absent field keeps PolicySpec's default (policy.h holds the one copy of each default).
  auto num = [&](const char* k, double def) {
    Napi::Value x = o.Get(k);
    return x.IsNumber() ? x.As<Napi::Number>().DoubleValue() : def;
  };
  if (type == "none")
    s.type = PolicySpec::None;
  else if (type == "static") {
    s.type = PolicySpec::Static;
    s.skipLayers = intList(env, o.Get("skipLayers"), "policy.skipLayers");
    s.skipAttention = intList(env, o.Get("skipAttention"), "policy.skipAttention");
    s.skipMlp = intList(env, o.Get("skipMlp"), "policy.skipMlp");
  } else if (type == "flexidepth") {
    s.type = PolicySpec::FlexiDepth;
    s.threshold = float(num("threshold", s.threshold));
  } else if (type == "skiplayer") {
    s.type = PolicySpec::SkipLayer;
  } else if (type == "d3") {
    s.type = PolicySpec::D3;
    s.alpha = num("alpha", s.alpha);
    s.start = int(num("start", s.start));
    s.minLayers = int(num("minLayers", s.minLayers));
  } else {
    throwArg(env, "policy.type must be none, static, flexidepth, skiplayer or d3");
  }
  return s;
}

namespace {
// The penalties of `o` (validated in TypeScript, src/sampling.ts): absent = off.
void readPenalties(Napi::Env env, Napi::Object o, SamplingParams& sp, const std::string& what) {
  if (o.Get("repetitionPenalty").IsNumber())
    sp.repetitionPenalty = o.Get("repetitionPenalty").As<Napi::Number>().FloatValue();
  if (o.Get("frequencyPenalty").IsNumber())
    sp.frequencyPenalty = o.Get("frequencyPenalty").As<Napi::Number>().FloatValue();
  if (o.Get("presencePenalty").IsNumber())
    sp.presencePenalty = o.Get("presencePenalty").As<Napi::Number>().FloatValue();
  if (o.Get("penaltyWindow").IsNumber()) {
    const double w = o.Get("penaltyWindow").As<Napi::Number>().DoubleValue();
    if (!(w >= 0 && w < 9e15) || w != std::floor(w)) throwArg(env, what + ".penaltyWindow must be an integer >= 0");
    sp.penaltyWindow = int64_t(w);
  }
  if (!(sp.repetitionPenalty > 0.f) || !std::isfinite(sp.repetitionPenalty))
    throwArg(env, what + ".repetitionPenalty must be a finite number above 0");
  if (!std::isfinite(sp.frequencyPenalty) || !std::isfinite(sp.presencePenalty))
    throwArg(env, what + ".frequencyPenalty and presencePenalty must be finite");
}
}  // namespace

void readRequestFields(Napi::Env env, Napi::Object o, Request& rq) {
  Napi::Value tv = o.Get("tokens");
  if (!tv.IsTypedArray() || tv.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throwArg(env, "request.tokens must be an Int32Array");
  Napi::Int32Array t = tv.As<Napi::Int32Array>();
  rq.tokens.assign(t.Data(), t.Data() + t.ElementLength());
  std::string mode = o.Get("logits").IsString() ? o.Get("logits").As<Napi::String>().Utf8Value() : "last";
  if (mode == "none")
    rq.logits = LogitsMode::None;
  else if (mode == "last")
    rq.logits = LogitsMode::Last;
  else if (mode == "all")
    rq.logits = LogitsMode::All;
  else
    throwArg(env, "request.logits must be 'none', 'last' or 'all'");
  Napi::Value smp = o.Get("sample");
  if (smp.IsObject()) {
    Napi::Object so = smp.As<Napi::Object>();
    rq.sample = true;  // absent fields keep SamplingParams' defaults (kernels.h)
    if (so.Get("temperature").IsNumber())
      rq.sampling.temperature = so.Get("temperature").As<Napi::Number>().FloatValue();
    if (so.Get("topK").IsNumber()) rq.sampling.topK = so.Get("topK").As<Napi::Number>().Int32Value();
    if (so.Get("topP").IsNumber()) rq.sampling.topP = so.Get("topP").As<Napi::Number>().FloatValue();
    readPenalties(env, so, rq.sampling, "request.sample");
  }
  // Penalties on the returned logits rows, without a draw (exact mode).
  Napi::Value pen = o.Get("penalties");
  if (pen.IsObject()) {
    if (rq.sample) throwArg(env, "request.penalties and request.sample cannot be combined (sample has its own)");
    readPenalties(env, pen.As<Napi::Object>(), rq.sampling, "request.penalties");
    rq.penalizeLogits = true;
  }
  if (o.Get("fullDepth").IsBoolean()) rq.fullDepth = o.Get("fullDepth").As<Napi::Boolean>().Value();
  if (o.Get("ahead").IsBoolean()) rq.ahead = o.Get("ahead").As<Napi::Boolean>().Value();
  Napi::Value stop = o.Get("aheadStop");
  if (!stop.IsUndefined()) {
    if (!stop.IsTypedArray() || stop.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throwArg(env, "request.aheadStop must be an Int32Array");
    Napi::Int32Array a = stop.As<Napi::Int32Array>();
    rq.aheadStop.assign(a.Data(), a.Data() + a.ElementLength());
  }
  if (o.Get("genIndex").IsNumber()) {
    double g = o.Get("genIndex").As<Napi::Number>().DoubleValue();
    if (!(std::fabs(g) < 1e9) || g != std::floor(g)) throwArg(env, "request.genIndex must be an integer");
    rq.hasGenIndex = true;
    rq.genIndex = int32_t(g);
  }
}

Napi::Object responseToJs(Napi::Env env, const Request& rq, const Response& rs) {
  Napi::Object r = Napi::Object::New(env);
  auto& lg = rs.logits;
  // Logits kept only for sampling stay native: no per-token copy of a vocabulary row.
  if (!lg.empty() && rq.logits != LogitsMode::None) {
    Napi::Float32Array a = Napi::Float32Array::New(env, lg.size());
    std::memcpy(a.Data(), lg.data(), lg.size() * 4);
    r.Set("logits", a);
  }
  if (rq.sample) r.Set("token", Napi::Number::New(env, rs.token));
  auto& ex = rs.executed;
  Napi::Uint8Array e = Napi::Uint8Array::New(env, ex.size());
  std::memcpy(e.Data(), ex.data(), ex.size());
  r.Set("executed", e);
  auto& wt = rs.routerWeights;
  Napi::Float32Array w = Napi::Float32Array::New(env, wt.size());
  std::memcpy(w.Data(), wt.data(), wt.size() * 4);
  r.Set("routerWeights", w);
  r.Set("weightBytes", Napi::Number::New(env, double(rs.weightBytes)));
  return r;
}

}  // namespace dg
