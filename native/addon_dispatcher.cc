#include "addon_dispatcher.h"

#include <sys/prctl.h>

namespace dg {

namespace {
struct Lock {
  pthread_mutex_t* m;
  explicit Lock(pthread_mutex_t* mu) : m(mu) { pthread_mutex_lock(m); }
  ~Lock() { pthread_mutex_unlock(m); }
};
}  // namespace

Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message, const std::string& file,
                      const std::string& option) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  if (!file.empty()) e.Set("file", Napi::String::New(env, file));
  if (!option.empty()) e.Set("option", Napi::String::New(env, option));
  return e;
}

// The thread-safe function's finalizer owns one reference to the dispatcher; it runs on the JS
// thread once the thread has released the function, or when the environment is torn down.
struct Dispatcher::Finalize {
  static void run(Napi::Env, std::shared_ptr<Dispatcher>* keep, Dispatcher*) {
    (*keep)->shutdown(true);
    delete keep;  // may destroy the dispatcher: on the JS thread, after its thread was joined
  }
};

std::shared_ptr<Dispatcher> Dispatcher::create(Napi::Env env, const char* name) {
  std::shared_ptr<Dispatcher> d(new Dispatcher());
  auto* keep = new std::shared_ptr<Dispatcher>(d);
  d->tsfn_ = Tsfn::New(env, name, 0, 1, d.get(), &Finalize::run, keep);
  d->tsfn_.Unref(env);  // an idle model does not keep the process alive; post() refs it
  d->thread_ = std::thread([raw = d.get()] {
    // What ps, top and gdb show. prctl, not pthread_setname_np: that is a GLIBC_2.34 symbol, and
    // the prebuilt binary must load on glibc 2.32.
    prctl(PR_SET_NAME, "depthgate-model", 0, 0, 0);
    raw->loop();
  });
  return d;
}

Dispatcher::~Dispatcher() {
  shutdown(false);
  pthread_cond_destroy(&cv_);
  pthread_mutex_destroy(&mu_);
}

bool Dispatcher::post(Napi::Env env, std::unique_ptr<Job> job) {
  {
    Lock lock(&mu_);
    if (closed_) return false;
    queue_.push_back(std::move(job));
    pthread_cond_signal(&cv_);
  }
  if (pending_++ == 0) tsfn_.Ref(env);
  return true;
}

void Dispatcher::send(std::unique_ptr<Message> m) {
  if (tsfnGone_) {
    m->drop();
    return;
  }
  Message* raw = m.release();
  if (tsfn_.NonBlockingCall(raw) != napi_ok) {
    // napi_closing: the environment is going away; the function must not be used again.
    tsfnGone_ = true;
    raw->drop();
    delete raw;
  }
}

void Dispatcher::close() {
  Lock lock(&mu_);
  closed_ = true;
  pthread_cond_signal(&cv_);
}

void Dispatcher::loop() {
  for (;;) {
    std::unique_ptr<Job> job;
    {
      Lock lock(&mu_);
      while (!closed_ && queue_.empty()) pthread_cond_wait(&cv_, &mu_);
      if (queue_.empty()) break;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job->work(*this);
    send(std::move(job));
  }
  if (!tsfnGone_) tsfn_.Release();
}

void Dispatcher::shutdown(bool teardown) {
  std::deque<std::unique_ptr<Job>> dropped;
  {
    Lock lock(&mu_);
    closed_ = true;
    // The finalizer runs before the thread has released the function only when the
    // environment is torn down: what is still queued can never be delivered.
    if (teardown) dropped.swap(queue_);
    pthread_cond_signal(&cv_);
  }
  if (teardown) cancelled_.store(true, std::memory_order_relaxed);
  for (auto& j : dropped) j->drop();
  if (thread_.joinable()) thread_.join();
}

void Dispatcher::callJs(Napi::Env env, Napi::Function, Dispatcher* d, Message* m) {
  std::unique_ptr<Message> own(m);
  if (static_cast<napi_env>(env) == nullptr) {  // teardown: free, do not call into JS
    m->drop();
    return;
  }
  Napi::HandleScope scope(env);
  try {
    m->deliver(env);
  } catch (const Napi::Error& e) {
    // Deliveries settle promises; the only JS they call (onProgress) is wrapped in src/ so it
    // cannot throw. Anything else is reported the way Node reports an uncaught exception.
    e.ThrowAsJavaScriptException();
  }
  if (m->settlesJob && --d->pending_ == 0) d->tsfn_.Unref(env);
}

}  // namespace dg
