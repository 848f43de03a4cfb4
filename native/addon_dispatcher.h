// The engine's own thread for one model: its load and every forward pass run here, one after
// another, never on the libuv thread pool (which stays free for the application's fs, crypto,
// dns and zlib work, whatever the models are doing). Results come back to JavaScript through a
// thread-safe function, which settles the promise on the event loop.
//
// Lifetime: a Dispatcher is shared by the NativeModel that uses it and by its thread-safe
// function; it is destroyed on the JavaScript thread only, and its destructor joins the thread.
// Jobs never own it, so the thread never destroys (and never joins) itself. When the environment
// is torn down (process exit, Worker.terminate()) while a job runs, the teardown waits for that
// job (a load stops at its next progress point) and drops what is still queued.
#pragma once
#include <napi.h>

#include <pthread.h>

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "errors.h"

namespace dg {

// A coded JS error: {message, code, file?, option?}.
Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message, const std::string& file,
                      const std::string& option = "");

// An engine exception caught on the dispatcher thread, to become a coded JS error later.
struct CaughtError {
  std::string code = "ERR_DEPTHGATE_INTERNAL", file, option, message;
  Napi::Error toJs(Napi::Env env) const { return makeError(env, code, message, file, option); }
};

// Runs f; an exception becomes `err` (dg::Error keeps its code, file and option; bad_alloc is
// out of memory). Returns false when f threw.
template <typename F>
bool runCaught(F&& f, CaughtError& err) {
  try {
    f();
    return true;
  } catch (const OptionError& e) {
    err.code = e.code;
    err.option = e.option;
    err.message = e.what();
  } catch (const Error& e) {
    err.code = e.code;
    err.file = e.file;
    err.message = e.what();
  } catch (const std::bad_alloc&) {
    err.code = kErrMemory;
    err.message = "out of host memory";
  } catch (const std::exception& e) {
    err.code = "ERR_DEPTHGATE_INTERNAL";
    err.message = e.what();
  }
  return false;
}

class Dispatcher {
 public:
  // Something delivered to the JavaScript thread.
  struct Message {
    virtual ~Message() = default;
    virtual void deliver(Napi::Env env) = 0;
    // Called instead of deliver when the environment is gone (or going), possibly off the JS
    // thread: give up references to JS values without calling into JavaScript.
    virtual void drop() {}
    bool settlesJob = false;  // the last message of a job (the one that settles its promise)
  };
  // Work for the dispatcher thread; when work() returns, the job itself is delivered.
  struct Job : Message {
    Job() { settlesJob = true; }
    virtual void work(Dispatcher& d) = 0;
  };

  static std::shared_ptr<Dispatcher> create(Napi::Env env, const char* name);
  ~Dispatcher();

  // JS thread. Queues a job; false when the dispatcher is closed (the job is dropped).
  bool post(Napi::Env env, std::unique_ptr<Job> job);
  // Dispatcher thread (from Job::work). Delivers a message on the JS thread, in order.
  void send(std::unique_ptr<Message> m);
  // JS thread. No more jobs: the thread finishes what is queued and exits. Idempotent.
  void close();
  // True once the environment is being torn down: long work should stop early.
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  const std::atomic<bool>* cancelFlag() const { return &cancelled_; }

 private:
  struct Finalize;
  static void callJs(Napi::Env env, Napi::Function, Dispatcher* d, Message* m);
  using Tsfn = Napi::TypedThreadSafeFunction<Dispatcher, Message, &Dispatcher::callJs>;
  Dispatcher() = default;
  void loop();
  void shutdown(bool teardown);  // JS thread: stop the thread and join it

  // pthread's mutex and condition variable rather than std::condition_variable, whose wait()
  // needs GCC 12's libstdc++ (GLIBCXX_3.4.30) and would narrow where the prebuilt binary loads.
  pthread_mutex_t mu_ = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t cv_ = PTHREAD_COND_INITIALIZER;
  std::deque<std::unique_ptr<Job>> queue_;
  bool closed_ = false;
  std::atomic<bool> cancelled_{false};
  bool tsfnGone_ = false;  // dispatcher thread only: the tsfn said napi_closing, never touch it again
  int pending_ = 0;        // JS thread only: jobs posted and not yet settled (the loop is kept alive)
  Tsfn tsfn_;
  std::thread thread_;
};

}  // namespace dg
