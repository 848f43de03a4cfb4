#include "addon_model.h"

#include <chrono>
#include <cstring>
#include <memory>

#include "addon_dispatcher.h"
#include "addon_marshal.h"
#include "backend.h"
#include "cuda_loader.h"
#include "engine.h"
#include "errors.h"
#include "model.h"

namespace dg {

namespace {

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
    Napi::Function f = DefineClass(
        env, "NativeModel",
        {InstanceMethod("info", &NativeModel::Info), InstanceMethod("createSequence", &NativeModel::CreateSequence),
         InstanceMethod("forward", &NativeModel::Forward), InstanceMethod("dispose", &NativeModel::Dispose)});
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
    Napi::Function f = DefineClass(
        env, "NativeSequence",
        {InstanceAccessor("length", &NativeSequence::Length, nullptr),
         InstanceAccessor("contextSize", &NativeSequence::ContextSize, nullptr),
         InstanceMethod("truncate", &NativeSequence::Truncate), InstanceMethod("setSeed", &NativeSequence::SetSeed),
         InstanceMethod("readKv", &NativeSequence::ReadKv), InstanceMethod("dispose", &NativeSequence::Dispose)});
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
  // Every method below sees the sequence as the caller left it: a decode step run ahead of the
  // caller's next request (engine_ahead.cc) is not counted, and is undone before the sequence is
  // read or changed (waiting for it when it is still running: at most one pass).
  Napi::Value Length(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), seq ? double(seq->engine->aheadLength(*seq)) : 0);
  }
  Napi::Value ContextSize(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), seq ? double(seq->maxContext) : 0);
  }
  Napi::Value Truncate(const Napi::CallbackInfo& info) {
    auto s = live(info.Env());
    if (!info[0].IsNumber()) throwArg(info.Env(), "truncate(length) needs a number");
    s->engine->settleAhead(*s);
    s->engine->truncate(*s, info[0].As<Napi::Number>().Int64Value());
    return info.Env().Undefined();
  }
  Napi::Value SetSeed(const Napi::CallbackInfo& info) {
    auto s = live(info.Env());
    if (!info[0].IsNumber()) throwArg(info.Env(), "setSeed(seed) needs a number");
    s->engine->settleAhead(*s);
    s->rng = uint64_t(info[0].As<Napi::Number>().Int64Value());
    return info.Env().Undefined();
  }
  // readKv(layer) -> {k, v}: Float32Arrays of [length, kvWidth] (tests; see kv_inspect.cc).
  Napi::Value ReadKv(const Napi::CallbackInfo& info) {
    auto s = live(info.Env());
    if (!info[0].IsNumber()) throwArg(info.Env(), "readKv(layer) needs a number");
    std::vector<float> k, v;
    s->engine->settleAhead(*s);
    try {
      s->engine->readKv(*s, info[0].As<Napi::Number>().Int32Value(), k, v);
    } catch (const std::exception& e) {
      throwArg(info.Env(), e.what());
    }
    auto toJs = [&](const std::vector<float>& src) {
      Napi::Float32Array a = Napi::Float32Array::New(info.Env(), src.size());
      if (!src.empty()) std::memcpy(a.Data(), src.data(), src.size() * sizeof(float));
      return a;
    };
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("k", toJs(k));
    out.Set("v", toJs(v));
    return out;
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    seq.reset();
    engine.reset();
    return info.Env().Undefined();
  }
};

// A job that settles one promise: work() runs `run` on the model's thread with its exceptions
// captured; deliver() rejects with the captured error, or hands over to resolve().
class PromiseJob : public Dispatcher::Job {
 public:
  explicit PromiseJob(Napi::Env env) : deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void work(Dispatcher& d) final {
    ok_ = runCaught([&] { run(d); }, err_);
  }
  void deliver(Napi::Env env) final {
    if (settled_) return;
    settled_ = true;
    if (!ok_) {
      failed();
      deferred_.Reject(err_.toJs(env).Value());
    } else {
      resolve(env, deferred_);
    }
  }

 protected:
  // JS thread: resolves now, from a message run() sent once its result was complete, while run()
  // goes on with work nobody waits for; the job's own delivery then has nothing left to do.
  void resolveEarly(Napi::Env env) {
    if (settled_) return;
    settled_ = true;
    resolve(env, deferred_);
  }
  virtual void run(Dispatcher& d) = 0;
  // JS thread: the work succeeded; settle the promise (resolve, or reject after all).
  virtual void resolve(Napi::Env env, Napi::Promise::Deferred& deferred) = 0;
  // JS thread: the work threw; called before the promise rejects with what it threw.
  virtual void failed() {}

 private:
  Napi::Promise::Deferred deferred_;
  bool ok_ = false;
  bool settled_ = false;  // JS thread only
  CaughtError err_;
};

// Loads the checkpoint and builds the engine on the model's thread; progress is delivered to
// onProgress on the JS thread, in order, before the promise settles.
class LoadJob : public PromiseJob {
 public:
  LoadJob(Napi::Env env, std::weak_ptr<Dispatcher> dispatcher, ModelConfig cfg, std::vector<std::string> files,
          int threads, bool prefault, bool cuda, DType kvType, std::string weights, Napi::Function progress,
          int32_t* abortFlag, Napi::Reference<Napi::Value> keep)
      : PromiseJob(env),
        dispatcher_(std::move(dispatcher)),
        cfg_(std::move(cfg)),
        files_(std::move(files)),
        threads_(threads),
        prefault_(prefault),
        cuda_(cuda),
        kvType_(kvType),
        weights_(std::move(weights)),
        abort_(abortFlag),
        keepAbort_(std::move(keep)) {
    if (!progress.IsEmpty()) progress_ = Napi::Persistent(progress);
  }

  void run(Dispatcher& d) override {
    auto model = loadModel(cfg_, files_, prefault_, [&](double f) {
      if (!progress_.IsEmpty()) d.send(std::make_unique<Progress>(this, f));
      return !flagSet(abort_) && !d.cancelled();
    });
    if (weights_ != "stored")
      quantizeModel(*model, weights_, threads_, [&] { return !flagSet(abort_) && !d.cancelled(); });
    if (!cuda_) layOutForCpu(*model, threads_, [&] { return !flagSet(abort_) && !d.cancelled(); });
    std::shared_ptr<Model> shared(std::move(model));
    std::unique_ptr<Ops> ops = cuda_ ? createCudaOps(0) : std::unique_ptr<Ops>(createCpuOps(threads_));
    engine_ = std::make_shared<Engine>(shared, std::move(ops), kvType_);
  }
  void resolve(Napi::Env env, Napi::Promise::Deferred& deferred) override {
    std::shared_ptr<Dispatcher> d = dispatcher_.lock();
    if (!d) {
      deferred.Reject(makeError(env, kErrDisposed, "the addon is shutting down", "").Value());
      return;
    }
    Napi::Object obj = addonData(env).model.New({});
    NativeModel* nm = NativeModel::Unwrap(obj);
    nm->engine = std::move(engine_);
    nm->dispatcher = std::move(d);
    deferred.Resolve(obj);
  }
  void failed() override {
    if (std::shared_ptr<Dispatcher> d = dispatcher_.lock()) d->close();  // no model will use this thread
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

  std::weak_ptr<Dispatcher> dispatcher_;  // never owned by a job: the thread must not destroy itself
  ModelConfig cfg_;
  std::vector<std::string> files_;
  int threads_;
  bool prefault_;
  bool cuda_;
  DType kvType_;
  std::string weights_;  // "stored", "q8_0", "q4_0", "q4_k" or "q6_k"
  int32_t* abort_;
  Napi::Reference<Napi::Value> keepAbort_;
  Napi::FunctionReference progress_;
  std::shared_ptr<Engine> engine_;
};

// ---------------------------------------------------------------------------------------------

Napi::Value NativeModel::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto e = live(env);
  const Model& m = e->model();
  Napi::Object o = Napi::Object::New(env);
  o.Set("parameters", Napi::Number::New(env, double(m.parameters)));
  o.Set("weightBytes", Napi::Number::New(env, double(m.weightBytes)));
  o.Set("dtype", Napi::String::New(env, m.dtypeSummary));
  o.Set("weights", Napi::String::New(env, m.weightFormat));
  o.Set("quantizeMs", Napi::Number::New(env, m.quantizeSeconds * 1000.0));
  o.Set("repackedMatrices", Napi::Number::New(env, m.repackedMatrices));
  o.Set("placedMatrices", Napi::Number::New(env, m.placedMatrices));
  o.Set("hugePages", Napi::Boolean::New(env, m.cpuHugePages));
  o.Set("cpuLayoutMs", Napi::Number::New(env, m.cpuLayoutSeconds * 1000.0));
  o.Set("backend", Napi::String::New(env, e->ops().name()));
  o.Set("kvCacheType", Napi::String::New(env, e->kvType() == DType::F32   ? "f32"
                                              : e->kvType() == DType::F16 ? "f16"
                                                                          : "bf16"));
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
class ForwardJob : public PromiseJob {
 public:
  ForwardJob(Napi::Env env, std::shared_ptr<Engine> engine) : PromiseJob(env), engine_(std::move(engine)) {}

 private:
  // Declared before seqs_, so destroyed after them: a sequence's destructor returns its cache to
  // the engine, and when the model and the sequences were disposed while the job ran (a step run
  // ahead outlives its promise), this job holds the last reference to both.
  std::shared_ptr<Engine> engine_;

 public:
  std::vector<std::shared_ptr<Sequence>> seqs_;  // alive until the pass is over, disposed or not
  std::vector<Request> requests_;
  PolicySpec policy_;

  void run(Dispatcher& d) override {
    started_ = Clock::now();
    ahead_ = engine_->takeAhead(requests_, responses_, policy_);
    if (!ahead_) engine_->forward(requests_, responses_, policy_, d.cancelFlag());
    ended_ = Clock::now();
    if (!engine_->aheadWanted(requests_, responses_)) return;
    // The answer goes now; the next step runs while JavaScript handles this one. From here the
    // JS thread reads requests_ and responses_, and this thread only reads them too.
    d.send(std::make_unique<Early>(this));
    engine_->runAhead(requests_[0], responses_[0], policy_, d.cancelFlag());
  }
  void resolve(Napi::Env env, Napi::Promise::Deferred& deferred) override {
    // Where the call's time went (bench:overhead's breakdown): posted -> the model thread took it
    // (queue), the pass itself, the pass's end -> this callback on the JS thread (deliver).
    const Clock::time_point delivered = Clock::now();
    Napi::Object timing = Napi::Object::New(env);
    timing.Set("queueMs", ms(posted_, started_));
    timing.Set("passMs", ms(started_, ended_));
    timing.Set("deliverMs", ms(ended_, delivered));
    timing.Set("ahead", ahead_);  // answered by a step run ahead: passMs is the lookup
    Napi::Array out = Napi::Array::New(env, responses_.size());
    for (size_t i = 0; i < responses_.size(); i++) {
      Napi::Object r = responseToJs(env, requests_[i], responses_[i]);
      r.Set("timing", timing);
      out.Set(uint32_t(i), r);
    }
    deferred.Resolve(out);
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double ms(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  }
  // Delivers the job's answer before the job is done (it is delivered before the job itself, so
  // the job is still alive).
  struct Early : Dispatcher::Message {
    explicit Early(ForwardJob* j) : job(j) {}
    void deliver(Napi::Env env) override { job->resolveEarly(env); }
    ForwardJob* job;
  };
  std::vector<Response> responses_;
  Clock::time_point posted_ = Clock::now(), started_, ended_;
  bool ahead_ = false;
};

// forward([{sequence, tokens: Int32Array, logits: 'none'|'last'|'all', sample?: {temperature, topK, topP, ...},
//           genIndex?, penalties?, fullDepth?}], policy?); row i of a request with genIndex g produces
// generated token g + i (src/binding.ts's NativeRequest says what each field does)
Napi::Value NativeModel::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto e = live(env);
  if (!info[0].IsArray()) throwArg(env, "forward(requests) needs an array");
  Napi::Array arr = info[0].As<Napi::Array>();
  PolicySpec policy = readPolicy(env, info[1]);
  auto w = std::make_unique<ForwardJob>(env, e);
  w->policy_ = policy;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    if (!arr.Get(i).IsObject()) throwArg(env, "each request must be an object");
    Napi::Object o = arr.Get(i).As<Napi::Object>();
    Napi::Value sv = o.Get("sequence");
    if (!sv.IsObject() || !sv.As<Napi::Object>().InstanceOf(addonData(env).sequence.Value()))
      throwArg(env, "request.sequence must be a sequence of this addon");
    NativeSequence* ns = NativeSequence::Unwrap(sv.As<Napi::Object>());
    auto seq = ns->live(env);
    if (ns->engine != e) throwArg(env, "request.sequence belongs to another model");
    Request rq;
    rq.seq = seq.get();
    readRequestFields(env, o, rq);
    w->seqs_.push_back(seq);
    w->requests_.push_back(std::move(rq));
  }
  Napi::Promise p = w->promise();
  if (!dispatcher || !dispatcher->post(env, std::move(w)))
    throw makeError(env, kErrDisposed, "the model has been disposed", "");
  return p;
}

}  // namespace

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
  std::string weights = spec.Get("weights").IsString() ? spec.Get("weights").As<Napi::String>().Utf8Value() : "stored";
  if (weights != "stored" && weights != "q8_0" && weights != "q4_0" && weights != "q4_k" && weights != "q6_k")
    throwArg(env, "spec.weights must be 'stored', 'q8_0', 'q4_0', 'q4_k' or 'q6_k'");
  Napi::Function progress = info[1].IsFunction() ? info[1].As<Napi::Function>() : Napi::Function();
  Napi::Reference<Napi::Value> keep;
  int32_t* abortFlag = flagPointer(info[2], keep);
  std::shared_ptr<Dispatcher> d = Dispatcher::create(env, "depthgate-model");
  auto job = std::make_unique<LoadJob>(env, d, std::move(cfg), std::move(files), threads, prefault, backend == "cuda",
                                       kvType, std::move(weights), progress, abortFlag, std::move(keep));
  Napi::Promise p = job->promise();
  if (!d->post(env, std::move(job))) throwArg(env, "the model thread could not start");
  d.reset();  // from here the thread-safe function (and then the model) holds the dispatcher
  return p;
}

void initModelClasses(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  NativeModel::Init(env, exports);
  NativeSequence::Init(env, exports);
}

}  // namespace dg
