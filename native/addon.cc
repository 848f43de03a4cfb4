// N-API binding: each model's load and forward passes run on that model's own thread
// (native/dispatcher.h), so neither the event loop nor the libuv thread pool waits for the
// engine; JS objects own native ones through shared_ptr so dispose() during a pass is safe.
#include <cmath>
#include <napi.h>

#include <atomic>
#include <cstring>
#include <memory>

#include "addon_kernels.h"
#include "backend.h"
#include "cuda_loader.h"
#include "addon_dispatcher.h"
#include "engine.h"
#include "errors.h"
#include "model.h"
#include "threadpool.h"

namespace dg {

namespace {

[[noreturn]] void throwArg(Napi::Env env, const std::string& message) {
  throw makeError(env, kErrArg, message, "");
}

// Reads a flag that JS may set at any time from another thread's point of view.
bool flagSet(const int32_t* flag) { return flag && __atomic_load_n(flag, __ATOMIC_RELAXED) != 0; }

int32_t* flagPointer(Napi::Value v, Napi::Reference<Napi::Value>& keep) {
  if (!v.IsTypedArray()) return nullptr;
  auto ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_int32_array || ta.ElementLength() < 1) return nullptr;
  keep = Napi::Persistent(v);
  return reinterpret_cast<int32_t*>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
}

// ---------------------------------------------------------------------------------------------

class NativeSequence;

// Constructors live in the env's instance data, so the addon works when loaded into several
// environments (worker threads, jest workers).
struct AddonData {
  Napi::FunctionReference model, sequence;
};
AddonData& addonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "NativeModel",
                                   {InstanceMethod("info", &NativeModel::Info),
                                    InstanceMethod("createSequence", &NativeModel::CreateSequence),
                                    InstanceMethod("forward", &NativeModel::Forward),
                                    InstanceMethod("dispose", &NativeModel::Dispose)});
    addonData(env).model = Napi::Persistent(f);
    exports.Set("NativeModel", f);
  }
  explicit NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {}

  ~NativeModel() override {
    if (dispatcher) dispatcher->close();
  }

  std::shared_ptr<Engine> engine;
  std::shared_ptr<Dispatcher> dispatcher;  // the model's thread: its load, then its passes

  std::shared_ptr<Engine> live(Napi::Env env) {
    if (!engine) throw makeError(env, kErrDisposed, "the model has been disposed", "");
    return engine;
  }
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value CreateSequence(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    engine.reset();  // a pass in flight holds its own reference and finishes first
    if (dispatcher) dispatcher->close();
    dispatcher.reset();
    return info.Env().Undefined();
  }
};

class NativeSequence : public Napi::ObjectWrap<NativeSequence> {
 public:
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "NativeSequence",
                                   {InstanceAccessor("length", &NativeSequence::Length, nullptr),
                                    InstanceAccessor("contextSize", &NativeSequence::ContextSize, nullptr),
                                    InstanceMethod("truncate", &NativeSequence::Truncate),
                                    InstanceMethod("setSeed", &NativeSequence::SetSeed),
                                    InstanceMethod("dispose", &NativeSequence::Dispose)});
    addonData(env).sequence = Napi::Persistent(f);
    exports.Set("NativeSequence", f);
  }
  explicit NativeSequence(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeSequence>(info) {}

  std::shared_ptr<Engine> engine;  // declared before seq: the sequence is freed first
  std::shared_ptr<Sequence> seq;

  std::shared_ptr<Sequence> live(Napi::Env env) {
    if (!seq) throw makeError(env, kErrDisposed, "the sequence has been disposed", "");
    return seq;
  }
  Napi::Value Length(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), seq ? double(seq->length) : 0);
  }
  Napi::Value ContextSize(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), seq ? double(seq->maxContext) : 0);
  }
  Napi::Value Truncate(const Napi::CallbackInfo& info) {
    auto s = live(info.Env());
    if (!info[0].IsNumber()) throwArg(info.Env(), "truncate(length) needs a number");
    s->engine->truncate(*s, info[0].As<Napi::Number>().Int64Value());
    return info.Env().Undefined();
  }
  Napi::Value SetSeed(const Napi::CallbackInfo& info) {
    auto s = live(info.Env());
    if (!info[0].IsNumber()) throwArg(info.Env(), "setSeed(seed) needs a number");
    s->rng = uint64_t(info[0].As<Napi::Number>().Int64Value());
    return info.Env().Undefined();
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    seq.reset();
    engine.reset();
    return info.Env().Undefined();
  }
};

// ---------------------------------------------------------------------------------------------
// loadModel({files, config, threads, prefault, backend, kvCacheType}, onProgress?, abortFlag?) -> Promise<NativeModel>

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

// Loads the checkpoint and builds the engine on the model's thread; progress is delivered to
// onProgress on the JS thread, in order, before the promise settles.
class LoadJob : public Dispatcher::Job {
 public:
  LoadJob(Napi::Env env, std::weak_ptr<Dispatcher> dispatcher, ModelConfig cfg, std::vector<std::string> files,
          int threads, bool prefault, bool cuda, DType kvType, Napi::Function progress, int32_t* abortFlag,
          Napi::Reference<Napi::Value> keep)
      : deferred_(Napi::Promise::Deferred::New(env)),
        dispatcher_(std::move(dispatcher)),
        cfg_(std::move(cfg)),
        files_(std::move(files)),
        threads_(threads),
        prefault_(prefault),
        cuda_(cuda),
        kvType_(kvType),
        abort_(abortFlag),
        keepAbort_(std::move(keep)) {
    if (!progress.IsEmpty()) progress_ = Napi::Persistent(progress);
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void work(Dispatcher& d) override {
    ok_ = runCaught(
        [&] {
          auto model = loadModel(cfg_, files_, prefault_, [&](double f) {
            if (!progress_.IsEmpty()) d.send(std::make_unique<Progress>(this, f));
            return !flagSet(abort_) && !d.cancelled();
          });
          std::shared_ptr<Model> shared(std::move(model));
          std::unique_ptr<Ops> ops = cuda_ ? createCudaOps(0) : std::unique_ptr<Ops>(createCpuOps(threads_));
          engine_ = std::make_shared<Engine>(shared, std::move(ops), kvType_);
        },
        err_);
  }
  void deliver(Napi::Env env) override {
    std::shared_ptr<Dispatcher> d = dispatcher_.lock();
    if (!ok_ || !d) {
      if (d) d->close();  // no model will use this thread
      deferred_.Reject(ok_ ? makeError(env, kErrDisposed, "the addon is shutting down", "").Value() : err_.toJs(env).Value());
      return;
    }
    Napi::Object obj = addonData(env).model.New({});
    NativeModel* nm = NativeModel::Unwrap(obj);
    nm->engine = std::move(engine_);
    nm->dispatcher = std::move(d);
    deferred_.Resolve(obj);
  }
  void drop() override {
    progress_.SuppressDestruct();
    keepAbort_.SuppressDestruct();
  }

 private:
  // One onProgress call; delivered before the job itself, while the job is alive.
  struct Progress : Dispatcher::Message {
    Progress(LoadJob* j, double f) : job(j), fraction(f) {}
    LoadJob* job;
    double fraction;
    void deliver(Napi::Env env) override {
      if (!job->progress_.IsEmpty()) job->progress_.Call({Napi::Number::New(env, fraction)});
    }
  };

  Napi::Promise::Deferred deferred_;
  std::weak_ptr<Dispatcher> dispatcher_;  // never owned by a job: the thread must not destroy itself
  ModelConfig cfg_;
  std::vector<std::string> files_;
  int threads_;
  bool prefault_;
  bool cuda_;
  DType kvType_;
  int32_t* abort_;
  Napi::Reference<Napi::Value> keepAbort_;
  Napi::FunctionReference progress_;
  std::shared_ptr<Engine> engine_;
  bool ok_ = false;
  CaughtError err_;
};

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throwArg(env, "loadModel(spec) needs an object");
  Napi::Object spec = info[0].As<Napi::Object>();
  Napi::Value filesV = spec.Get("files");
  if (!filesV.IsArray()) throwArg(env, "spec.files must be an array of paths");
  Napi::Array arr = filesV.As<Napi::Array>();
  std::vector<std::string> files;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value f = arr.Get(i);
    if (!f.IsString()) throwArg(env, "spec.files must hold strings");
    files.push_back(f.As<Napi::String>().Utf8Value());
  }
  if (files.empty()) throwArg(env, "spec.files is empty");
  if (!spec.Get("config").IsObject()) throwArg(env, "spec.config must be an object");
  ModelConfig cfg = readConfig(env, spec.Get("config").As<Napi::Object>());
  int threads = spec.Get("threads").IsNumber() ? spec.Get("threads").As<Napi::Number>().Int32Value() : 1;
  if (threads < 1 || threads > 1024) throwArg(env, "threads must be between 1 and 1024");
  bool prefault = spec.Get("prefault").IsBoolean() ? spec.Get("prefault").As<Napi::Boolean>().Value() : true;
  std::string backend = spec.Get("backend").IsString() ? spec.Get("backend").As<Napi::String>().Utf8Value() : "cpu";
  if (backend != "cpu" && backend != "cuda") throwArg(env, "spec.backend must be 'cpu' or 'cuda'");
  std::string kv = spec.Get("kvCacheType").IsString() ? spec.Get("kvCacheType").As<Napi::String>().Utf8Value() : "bf16";
  if (kv != "f32" && kv != "f16" && kv != "bf16") throwArg(env, "spec.kvCacheType must be 'f32', 'f16' or 'bf16'");
  const DType kvType = kv == "f32" ? DType::F32 : kv == "f16" ? DType::F16 : DType::BF16;
  Napi::Function progress = info[1].IsFunction() ? info[1].As<Napi::Function>() : Napi::Function();
  Napi::Reference<Napi::Value> keep;
  int32_t* abortFlag = flagPointer(info[2], keep);
  std::shared_ptr<Dispatcher> d = Dispatcher::create(env, "depthgate-model");
  auto job = std::make_unique<LoadJob>(env, d, std::move(cfg), std::move(files), threads, prefault, backend == "cuda",
                                       kvType, progress, abortFlag, std::move(keep));
  Napi::Promise p = job->promise();
  if (!d->post(env, std::move(job))) throwArg(env, "the model thread could not start");
  d.reset();  // from here the thread-safe function (and then the model) holds the dispatcher
  return p;
}

// ---------------------------------------------------------------------------------------------

Napi::Value NativeModel::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto e = live(env);
  const Model& m = e->model();
  Napi::Object o = Napi::Object::New(env);
  o.Set("parameters", Napi::Number::New(env, double(m.parameters)));
  o.Set("weightBytes", Napi::Number::New(env, double(m.weightBytes)));
  o.Set("dtype", Napi::String::New(env, m.dtypeSummary));
  o.Set("backend", Napi::String::New(env, e->ops().name()));
  o.Set("kvCacheType", Napi::String::New(env, e->kvType() == DType::F32 ? "f32" : e->kvType() == DType::F16 ? "f16" : "bf16"));
  o.Set("kvBytesPerToken", Napi::Number::New(env, double(e->kvBytesPerPosition())));
  Napi::Array files = Napi::Array::New(env);
  for (size_t i = 0; i < m.store.files().size(); i++) files.Set(uint32_t(i), m.store.files()[i]->path());
  o.Set("files", files);
  Napi::Array names = Napi::Array::New(env);
  Napi::Array where = Napi::Array::New(env);
  uint32_t k = 0;
  for (auto& kv : m.store.all()) {
    names.Set(k, kv.first);
    where.Set(k, Napi::Number::New(env, kv.second->file));
    k++;
  }
  o.Set("tensorNames", names);
  Napi::Array fd = Napi::Array::New(env), sk = Napi::Array::New(env);
  for (size_t i = 0; i < m.flexiDepthLayers.size(); i++) fd.Set(uint32_t(i), m.flexiDepthLayers[i]);
  for (size_t i = 0; i < m.skipRouterLayers.size(); i++) sk.Set(uint32_t(i), m.skipRouterLayers[i]);
  o.Set("flexiDepthLayers", fd);
  o.Set("skipRouterLayers", sk);
  o.Set("tensorFiles", where);
  return o;
}

Napi::Value NativeModel::CreateSequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto e = live(env);
  if (!info[0].IsNumber()) throwArg(env, "createSequence(contextSize, seed) needs a number");
  int64_t ctx = info[0].As<Napi::Number>().Int64Value();
  if (ctx < 1) throwArg(env, "contextSize must be at least 1");
  uint64_t seed = info[1].IsNumber() ? uint64_t(info[1].As<Napi::Number>().Int64Value()) : 0;
  Napi::Object obj = addonData(env).sequence.New({});
  NativeSequence* ns = NativeSequence::Unwrap(obj);
  ns->engine = e;
  ns->seq = std::shared_ptr<Sequence>(e->createSequence(ctx, seed).release());
  return obj;
}

// One batched forward pass on the model's thread.
class ForwardJob : public Dispatcher::Job {
 public:
  ForwardJob(Napi::Env env, std::shared_ptr<Engine> engine)
      : deferred_(Napi::Promise::Deferred::New(env)), engine_(std::move(engine)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  std::vector<std::shared_ptr<Sequence>> seqs_;  // alive until the pass is over, disposed or not
  std::vector<Request> requests_;
  PolicySpec policy_;

  void work(Dispatcher& d) override {
    ok_ = runCaught([&] { engine_->forward(requests_, responses_, policy_, d.cancelFlag()); }, err_);
  }
  void deliver(Napi::Env env) override {
    if (!ok_) {
      deferred_.Reject(err_.toJs(env).Value());
      return;
    }
    Napi::Array out = Napi::Array::New(env, responses_.size());
    for (size_t i = 0; i < responses_.size(); i++) {
      Napi::Object r = Napi::Object::New(env);
      auto& lg = responses_[i].logits;
      // Logits kept only for sampling stay native: no per-token copy of a vocabulary row.
      if (!lg.empty() && requests_[i].logits != LogitsMode::None) {
        Napi::Float32Array a = Napi::Float32Array::New(env, lg.size());
        std::memcpy(a.Data(), lg.data(), lg.size() * 4);
        r.Set("logits", a);
      }
      if (requests_[i].sample) r.Set("token", Napi::Number::New(env, responses_[i].token));
      auto& ex = responses_[i].executed;
      Napi::Uint8Array e = Napi::Uint8Array::New(env, ex.size());
      std::memcpy(e.Data(), ex.data(), ex.size());
      r.Set("executed", e);
      auto& wt = responses_[i].routerWeights;
      Napi::Float32Array w = Napi::Float32Array::New(env, wt.size());
      std::memcpy(w.Data(), wt.data(), wt.size() * 4);
      r.Set("weights", w);
      r.Set("weightBytes", Napi::Number::New(env, double(responses_[i].weightBytes)));
      out.Set(uint32_t(i), r);
    }
    deferred_.Resolve(out);
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Engine> engine_;
  std::vector<Response> responses_;
  bool ok_ = false;
  CaughtError err_;
};

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

// {type: 'none'|'static'|'flexidepth'|'skiplayer'|'d3', ...} as normalised by src/policy.ts
PolicySpec readPolicy(Napi::Env env, Napi::Value v) {
  PolicySpec s;
  if (v.IsUndefined() || v.IsNull()) return s;
  if (!v.IsObject()) throwArg(env, "policy must be an object");
  Napi::Object o = v.As<Napi::Object>();
  std::string type = o.Get("type").IsString() ? o.Get("type").As<Napi::String>().Utf8Value() : "";
  auto num = [&](const char* k, double def) {
    Napi::Value x = o.Get(k);
    return x.IsNumber() ? x.As<Napi::Number>().DoubleValue() : def;
  };
  if (type == "none") s.type = PolicySpec::None;
  else if (type == "static") {
    s.type = PolicySpec::Static;
    s.skipLayers = intList(env, o.Get("skipLayers"), "policy.skipLayers");
    s.skipAttention = intList(env, o.Get("skipAttention"), "policy.skipAttention");
    s.skipMlp = intList(env, o.Get("skipMlp"), "policy.skipMlp");
  } else if (type == "flexidepth") {
    s.type = PolicySpec::FlexiDepth;
    s.threshold = float(num("threshold", 0.5));
  } else if (type == "skiplayer") {
    s.type = PolicySpec::SkipLayer;
  } else if (type == "d3") {
    s.type = PolicySpec::D3;
    s.alpha = num("alpha", 1.0);
    s.start = int(num("start", 0));
    s.minLayers = int(num("minLayers", 2));
  } else {
    throwArg(env, "policy.type must be none, static, flexidepth, skiplayer or d3");
  }
  return s;
}

// forward([{sequence, tokens: Int32Array, logits: 'none'|'last'|'all', sample?: {temperature, topK, topP},
//           genIndex?}], policy?); row i of a request with genIndex g produces generated token g + i
Napi::Value NativeModel::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto e = live(env);
  if (!info[0].IsArray()) throwArg(env, "forward(requests) needs an array");
  Napi::Array arr = info[0].As<Napi::Array>();
  PolicySpec policy = readPolicy(env, info[1]);
  auto w = std::make_unique<ForwardJob>(env, e);
  w->policy_ = policy;
  {
    for (uint32_t i = 0; i < arr.Length(); i++) {
      if (!arr.Get(i).IsObject()) throwArg(env, "each request must be an object");
      Napi::Object o = arr.Get(i).As<Napi::Object>();
      Napi::Value sv = o.Get("sequence");
      if (!sv.IsObject() || !sv.As<Napi::Object>().InstanceOf(addonData(env).sequence.Value()))
        throwArg(env, "request.sequence must be a sequence of this addon");
      NativeSequence* ns = NativeSequence::Unwrap(sv.As<Napi::Object>());
      auto seq = ns->live(env);
      if (ns->engine != e) throwArg(env, "request.sequence belongs to another model");
      Napi::Value tv = o.Get("tokens");
      if (!tv.IsTypedArray() || tv.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
        throwArg(env, "request.tokens must be an Int32Array");
      Napi::Int32Array t = tv.As<Napi::Int32Array>();
      Request rq;
      rq.seq = seq.get();
      rq.tokens.assign(t.Data(), t.Data() + t.ElementLength());
      std::string mode = o.Get("logits").IsString() ? o.Get("logits").As<Napi::String>().Utf8Value() : "last";
      if (mode == "none") rq.logits = LogitsMode::None;
      else if (mode == "last") rq.logits = LogitsMode::Last;
      else if (mode == "all") rq.logits = LogitsMode::All;
      else throwArg(env, "request.logits must be 'none', 'last' or 'all'");
      Napi::Value smp = o.Get("sample");
      if (smp.IsObject()) {
        Napi::Object so = smp.As<Napi::Object>();
        rq.sample = true;
        rq.sampling.temperature = so.Get("temperature").IsNumber() ? so.Get("temperature").As<Napi::Number>().FloatValue() : 0.f;
        rq.sampling.topK = so.Get("topK").IsNumber() ? so.Get("topK").As<Napi::Number>().Int32Value() : 0;
        rq.sampling.topP = so.Get("topP").IsNumber() ? so.Get("topP").As<Napi::Number>().FloatValue() : 1.f;
      }
      if (o.Get("genIndex").IsNumber()) {
        double g = o.Get("genIndex").As<Napi::Number>().DoubleValue();
        if (!(std::fabs(g) < 1e9) || g != std::floor(g)) throwArg(env, "request.genIndex must be an integer");
        rq.hasGenIndex = true;
        rq.genIndex = int32_t(g);
      }
      w->seqs_.push_back(seq);
      w->requests_.push_back(std::move(rq));
    }
  }
  Napi::Promise p = w->promise();
  if (!dispatcher || !dispatcher->post(env, std::move(w))) throw makeError(env, kErrDisposed, "the model has been disposed", "");
  return p;
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  const CpuFeatures& f = cpuFeatures();
  Napi::Array feats = Napi::Array::New(env);
  uint32_t k = 0;
  if (f.avx2) feats.Set(k++, "avx2");
  if (f.fma) feats.Set(k++, "fma");
  if (f.f16c) feats.Set(k++, "f16c");
  if (f.avx512f) feats.Set(k++, "avx512f");
  if (f.avx512bw) feats.Set(k++, "avx512bw");
  o.Set("cpuFeatures", feats);
  o.Set("cpuKernels", Napi::String::New(env, cpuKernelVariant()));
  o.Set("usableProcessors", Napi::Number::New(env, usableProcessors()));
  CudaProbe cuda = probeCuda();
  Napi::Array backends = Napi::Array::New(env);
  backends.Set(0u, "cpu");
  if (cuda.libraryFound) backends.Set(1u, "cuda");
  o.Set("backends", backends);
  Napi::Object c = Napi::Object::New(env);
  c.Set("libraryFound", Napi::Boolean::New(env, cuda.libraryFound));
  c.Set("libraryPath", Napi::String::New(env, cuda.libraryPath));
  c.Set("error", Napi::String::New(env, cuda.error));
  c.Set("probe", Napi::String::New(env, cuda.probeJson));
  o.Set("cuda", c);
  o.Set("napiVersion", Napi::Number::New(env, NAPI_VERSION));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  NativeModel::Init(env, exports);
  NativeSequence::Init(env, exports);
  exports.Set("loadModel", Napi::Function::New(env, LoadModel));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("kernels", makeKernels(env));
  return exports;
}

}  // namespace

}  // namespace dg

static Napi::Object InitDepthgate(Napi::Env env, Napi::Object exports) { return dg::Init(env, exports); }

NODE_API_MODULE(depthgate, InitDepthgate)
