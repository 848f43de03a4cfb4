// The CPU op table in a child process (see child_ops.h): the parent's proxy and the child's server.
#include "child_ops.h"

#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "errors.h"
#include "kernels.h"

extern char** environ;

namespace parity {

using namespace dg;

namespace {

constexpr size_t kArenaBytes = size_t(4) << 30;  // address space only: nothing is committed until used

enum OpCode : uint32_t {
  kHello = 0,
  kAlloc,
  kRelease,
  kCopy,
  kUpload,
  kDownload,
  kSync,
  kPrepare,
  kEmbed,
  kRmsnorm,
  kMatmul,
  kMatmul2,
  kGateUp,
  kKvWrite,
  kRope,
  kAttention,
  kTanh,
  kThreshold,
  kArgmax,
  kCompact,
  kSample,
  kForget,
  kStats,
};

struct ReqHeader {
  uint32_t op;
  uint32_t argBytes;
  uint64_t extraBytes;
};
struct RepHeader {
  int32_t status;  // 0 ok, 1 dg::Error (payload: code NUL message), 2 other exception (payload: message)
  uint32_t pad;
  uint64_t bytes;
};

// The arguments of each op, sent as they are: the parent and the child are the same executable,
// and every pointer in them is the child's own.
struct AllocArgs {
  size_t bytes;
};
struct PtrArgs {
  const void* p;
};
struct CopyArgs {
  void* dst;
  const void* src;
  size_t bytes;
};
struct UploadArgs {
  void* dst;
  size_t bytes;
};
struct PrepareArgs {
  Weight w;
  size_t misalign;
};
struct EmbedArgs {
  float* x;
  const int32_t* tokens;
  int64_t rows;
  Weight t;
};
struct RmsnormArgs {
  float* out;
  const float* x;
  RowSet rows;
  int64_t dim;
  const float* w;
  float eps;
};
struct MatmulArgs {
  float* out;
  int64_t ldo;
  const float* x;
  int64_t ldx;
  RowSet rows;
  Weight W;
  const float* bias;
  Epilogue ep;
};
struct Matmul2Args {
  float* out0;
  int64_t ldo0;
  float* out1;
  int64_t ldo1;
  const float* x;
  int64_t ldx;
  RowSet rows;
  Weight W0;
  const float* b0;
  Weight W1;
  const float* b1;
};
struct GateUpArgs {
  float* out;
  int64_t ldo;
  const float* x;
  int64_t ldx;
  RowSet rows;
  Weight Wg;
  const float* bg;
  Weight Wu;
  const float* bu;
};
struct KvWriteArgs {
  float* k;
  const float* v;
  StepRows step;
  int layer;
  AttnShape a;
  const float* invFreq;
};
struct RopeArgs {
  float* q;
  int64_t ldq;
  RowSet rows;
  StepRows step;
  int nHeads, headDim;
  const float* invFreq;
};
struct AttentionArgs {
  float* out;
  const float* q;
  RowSet rows;
  StepRows step;
  int layer;
  AttnShape a;
};
struct TanhArgs {
  float* x;
  RowSet rows;
  int64_t dim;
};
struct ThresholdArgs {
  uint8_t* a;
  uint8_t* m;
  float* w;
  const float* logits;
  int64_t rows;
  float threshold;
};
struct ArgmaxArgs {
  uint8_t* run;
  const float* logits;
  int64_t rows;
};
struct CompactArgs {
  const uint8_t* flags;
  int64_t rows;
  int32_t* runIdx;
  int32_t* runCount;
  int32_t* skipIdx;
  int32_t* skipCount;
};
struct SampleArgs {
  int32_t* tokens;
  float* logits;
  int64_t rows;
  int64_t vocab;
  SampleRow* params;
  const PenaltyToken* penalties;
};
struct StatsReply {
  uint64_t live;
  char variant[16];
};

bool writeAll(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w, n -= size_t(w);
  }
  return true;
}
bool readAll(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    const ssize_t r = read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r, n -= size_t(r);
  }
  return true;
}

// ---- the child ----------------------------------------------------------------------------

// Backend memory: a bump allocator over the reserved range. When nothing is live it starts over
// (and gives the pages back), which the harness reaches after every case.
class Arena {
 public:
  Arena(char* base, size_t size) : base_(base), size_(size) {}
  void* alloc(size_t n, bool weight) {
    const size_t at = (top_ + 255) & ~size_t(255);
    if (at + n > size_) throw Error(kErrMemory, "the child backend's arena is full (a buffer is never released?)");
    top_ = at + std::max<size_t>(n, 1);
    (weight ? weights_ : live_)[reinterpret_cast<uintptr_t>(base_ + at)] = std::max<size_t>(n, 1);
    return base_ + at;
  }
  void release(const void* p) {
    auto it = live_.find(reinterpret_cast<uintptr_t>(p));
    if (it == live_.end()) throw Error(kErrArg, "release of a pointer this backend did not allocate");
    live_.erase(it);
    maybeReset();
  }
  void forgetWeights() {
    weights_.clear();
    maybeReset();
  }
  size_t live() const { return live_.size(); }
  // [p, p + bytes) must lie inside one live allocation (or prepared weight).
  void need(const char* op, const char* what, const void* p, size_t bytes) const {
    if (bytes == 0) return;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (const auto* m : {&live_, &weights_}) {
      auto it = m->upper_bound(a);
      if (it == m->begin()) continue;
      --it;
      if (a >= it->first && a < it->first + it->second) {
        if (a + bytes <= it->first + it->second) return;
        throw Error("ERR_PARITY_BAD_POINTER", std::string(op) + ": " + what + " needs " + std::to_string(bytes) +
                                                  " bytes but its allocation ends " +
                                                  std::to_string(it->first + it->second - a) + " bytes after it");
      }
    }
    throw Error("ERR_PARITY_BAD_POINTER",
                std::string(op) + ": " + what + " is not backend memory (host memory passed where an upload belongs?)");
  }

 private:
  void maybeReset() {
    if (!live_.empty() || !weights_.empty() || top_ == 0) return;
    madvise(base_, top_, MADV_DONTNEED);
    top_ = 0;
  }
  char* base_;
  size_t size_, top_ = 0;
  std::map<uintptr_t, size_t> live_, weights_;
};

// Argument checks: every pointer an op reads or writes must be backend memory, large enough.
struct Checker {
  const Arena& A;
  const char* op;
  void need(const char* what, const void* p, size_t bytes) const { A.need(op, what, p, bytes); }
  int64_t count(const RowSet& s) const {
    int64_t n = s.max;
    if (s.count) {
      need("rows.count", s.count, 4);
      n = *s.count;
      if (n < 0 || n > s.max)
        throw Error(kErrArg,
                    std::string(op) + ": rows.count " + std::to_string(n) + " is outside 0.." + std::to_string(s.max));
    }
    if (s.idx) need("rows.idx", s.idx, size_t(n) * 4);
    return n;
  }
  // Rows of the input a set reads: one past the largest index.
  static int64_t span(const RowSet& s, int64_t n) {
    if (!s.idx) return n;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) m = std::max<int64_t>(m, int64_t(s.idx[i]) + 1);
    return m;
  }
  void rows(const char* what, const void* p, int64_t nRows, int64_t ld, int64_t cols) const {
    if (nRows > 0) need(what, p, size_t((nRows - 1) * ld + cols) * 4);
  }
  void weight(const char* what, const Weight& w) const { need(what, w.data, w.bytes()); }
  void vec(const char* what, const void* p, int64_t n) const {
    if (p) need(what, p, size_t(n) * 4);
  }
  // The caches the step rows `rows` (or all when null) touch at `layer`, up to each row's position.
  void step(const StepRows& s, const AttnShape& a, int layer, const std::vector<int64_t>* which) const {
    need("step.pos", s.pos, size_t(s.rows) * 4);
    need("step.seq", s.seq, size_t(s.rows) * 4);
    std::vector<int64_t> all;
    if (!which) {
      for (int64_t r = 0; r < s.rows; r++) all.push_back(r);
      which = &all;
    }
    for (int64_t r : *which) {
      if (r < 0 || r >= s.rows) throw Error(kErrArg, std::string(op) + ": a row index is outside the step");
      need("step.seqs", s.seqs, size_t(s.seq[r] + 1) * sizeof(KvCacheRef));
      const KvCacheRef& c = s.seqs[s.seq[r]];
      const size_t end =
          (size_t(layer) * size_t(c.capacity) + size_t(s.pos[r]) + 1) * size_t(a.kvWidth()) * dtypeSize(a.kv);
      if (s.pos[r] < 0 || s.pos[r] >= c.capacity)
        throw Error(kErrArg, std::string(op) + ": a position is outside its cache");
      need("cache K", c.k, end);
      need("cache V", c.v, end);
    }
  }
};

void serve(int fd, Ops& cpu, Arena& arena) {
  std::vector<char> args, extra, reply;
  for (;;) {
    ReqHeader h{};
    if (!readAll(fd, &h, sizeof h)) return;
    args.resize(h.argBytes);
    extra.resize(size_t(h.extraBytes));
    if ((h.argBytes && !readAll(fd, args.data(), h.argBytes)) ||
        (h.extraBytes && !readAll(fd, extra.data(), extra.size())))
      return;
    reply.clear();
    RepHeader rep{0, 0, 0};
    try {
      const char* a = args.data();
      switch (h.op) {
        case kAlloc: {
          void* p = arena.alloc(reinterpret_cast<const AllocArgs*>(a)->bytes, false);
          reply.assign(reinterpret_cast<char*>(&p), reinterpret_cast<char*>(&p) + sizeof p);
          break;
        }
        case kRelease:
          arena.release(reinterpret_cast<const PtrArgs*>(a)->p);
          break;
        case kCopy: {
          auto* c = reinterpret_cast<const CopyArgs*>(a);
          Checker k{arena, "copy"};
          k.need("dst", c->dst, c->bytes);
          k.need("src", c->src, c->bytes);
          cpu.copy(c->dst, c->src, c->bytes);
          break;
        }
        case kUpload: {
          auto* u = reinterpret_cast<const UploadArgs*>(a);
          Checker{arena, "upload"}.need("dst", u->dst, u->bytes);
          cpu.upload(u->dst, extra.data(), u->bytes);
          break;
        }
        case kDownload: {
          auto* d = reinterpret_cast<const UploadArgs*>(a);
          Checker{arena, "download"}.need("src", d->dst, d->bytes);
          reply.resize(d->bytes);
          cpu.download(reply.data(), d->dst, d->bytes);
          break;
        }
        case kSync:
          cpu.sync();
          break;
        case kPrepare: {
          auto* p = reinterpret_cast<const PrepareArgs*>(a);
          char* mem = static_cast<char*>(arena.alloc(extra.size() + 64, true)) + p->misalign;
          std::memcpy(mem, extra.data(), extra.size());
          Weight w = cpu.prepareWeight(Weight{mem, p->w.dtype, p->w.rows, p->w.cols});
          reply.assign(reinterpret_cast<char*>(&w), reinterpret_cast<char*>(&w) + sizeof w);
          break;
        }
        case kEmbed: {
          auto* e = reinterpret_cast<const EmbedArgs*>(a);
          Checker k{arena, "embed"};
          k.vec("tokens", e->tokens, e->rows);
          k.rows("x", e->x, e->rows, e->t.cols, e->t.cols);
          k.weight("table", e->t);
          for (int64_t r = 0; r < e->rows; r++)
            if (e->tokens[r] < 0 || e->tokens[r] >= e->t.rows)
              throw Error(kErrArg, "embed: a token is outside the table");
          cpu.embed(e->x, e->tokens, e->rows, e->t);
          break;
        }
        case kRmsnorm: {
          auto* r = reinterpret_cast<const RmsnormArgs*>(a);
          Checker k{arena, "rmsnorm"};
          const int64_t n = k.count(r->rows);
          k.rows("out", r->out, n, r->dim, r->dim);
          k.rows("x", r->x, Checker::span(r->rows, n), r->dim, r->dim);
          k.vec("weight", r->w, r->dim);
          cpu.rmsnorm(r->out, r->x, r->rows, r->dim, r->w, r->eps);
          break;
        }
        case kMatmul: {
          auto* m = reinterpret_cast<const MatmulArgs*>(a);
          Checker k{arena, "matmul"};
          const int64_t n = k.count(m->rows);
          k.rows("x", m->x, Checker::span(m->rows, n), m->ldx, m->W.cols);
          k.weight("W", m->W);
          k.vec("bias", m->bias, m->W.rows);
          int64_t outRows = n;
          if (m->ep.mode == Epilogue::ScatterAdd) {
            k.vec("ep.dst", m->ep.dst, n);
            outRows = 0;
            for (int64_t i = 0; i < n; i++) outRows = std::max<int64_t>(outRows, int64_t(m->ep.dst[i]) + 1);
            if (m->ep.scaleMode != Epilogue::One) k.vec("ep.scale", m->ep.scale, outRows);
          }
          k.rows("out", m->out, outRows, m->ldo, m->W.rows);
          cpu.matmul(m->out, m->ldo, m->x, m->ldx, m->rows, m->W, m->bias, m->ep);
          break;
        }
        case kMatmul2: {
          auto* m = reinterpret_cast<const Matmul2Args*>(a);
          Checker k{arena, "matmul2"};
          const int64_t n = k.count(m->rows);
          k.rows("x", m->x, Checker::span(m->rows, n), m->ldx, m->W0.cols);
          k.weight("W0", m->W0);
          k.weight("W1", m->W1);
          k.vec("b0", m->b0, m->W0.rows);
          k.vec("b1", m->b1, m->W1.rows);
          k.rows("out0", m->out0, n, m->ldo0, m->W0.rows);
          k.rows("out1", m->out1, n, m->ldo1, m->W1.rows);
          cpu.matmul2(m->out0, m->ldo0, m->out1, m->ldo1, m->x, m->ldx, m->rows, m->W0, m->b0, m->W1, m->b1);
          break;
        }
        case kGateUp: {
          auto* m = reinterpret_cast<const GateUpArgs*>(a);
          Checker k{arena, "matmulGateUp"};
          const int64_t n = k.count(m->rows);
          k.rows("x", m->x, Checker::span(m->rows, n), m->ldx, m->Wg.cols);
          k.weight("Wg", m->Wg);
          k.weight("Wu", m->Wu);
          k.vec("bg", m->bg, m->Wg.rows);
          k.vec("bu", m->bu, m->Wu.rows);
          k.rows("out", m->out, n, m->ldo, m->Wg.rows);
          cpu.matmulGateUp(m->out, m->ldo, m->x, m->ldx, m->rows, m->Wg, m->bg, m->Wu, m->bu);
          break;
        }
        case kKvWrite: {
          auto* w = reinterpret_cast<const KvWriteArgs*>(a);
          Checker k{arena, "kvWriteRope"};
          k.rows("k", w->k, w->step.rows, w->a.kvWidth(), w->a.kvWidth());
          k.rows("v", w->v, w->step.rows, w->a.kvWidth(), w->a.kvWidth());
          k.vec("invFreq", w->invFreq, w->a.headDim / 2);
          k.step(w->step, w->a, w->layer, nullptr);
          cpu.kvWriteRope(w->k, w->v, w->step, w->layer, w->a, w->invFreq);
          break;
        }
        case kRope: {
          auto* r = reinterpret_cast<const RopeArgs*>(a);
          Checker k{arena, "ropeRows"};
          const int64_t n = k.count(r->rows);
          k.rows("q", r->q, n, r->ldq, int64_t(r->nHeads) * r->headDim);
          k.vec("invFreq", r->invFreq, r->headDim / 2);
          k.need("step.pos", r->step.pos, size_t(r->step.rows) * 4);
          for (int64_t i = 0; i < n; i++) {
            const int64_t row = r->rows.idx ? r->rows.idx[i] : i;
            if (row < 0 || row >= r->step.rows) throw Error(kErrArg, "ropeRows: a row index is outside the step");
          }
          cpu.ropeRows(r->q, r->ldq, r->rows, r->step, r->nHeads, r->headDim, r->invFreq);
          break;
        }
        case kAttention: {
          auto* t = reinterpret_cast<const AttentionArgs*>(a);
          Checker k{arena, "attention"};
          const int64_t n = k.count(t->rows);
          const int64_t qd = int64_t(t->a.nHeads) * t->a.headDim;
          k.rows("q", t->q, n, qd, qd);
          k.rows("out", t->out, n, qd, qd);
          std::vector<int64_t> which;
          for (int64_t i = 0; i < n; i++) which.push_back(t->rows.idx ? t->rows.idx[i] : i);
          k.step(t->step, t->a, t->layer, &which);
          cpu.attention(t->out, t->q, t->rows, t->step, t->layer, t->a);
          break;
        }
        case kTanh: {
          auto* t = reinterpret_cast<const TanhArgs*>(a);
          Checker k{arena, "tanhRows"};
          const int64_t n = k.count(t->rows);
          k.rows("x", t->x, Checker::span(t->rows, n), t->dim, t->dim);
          cpu.tanhRows(t->x, t->rows, t->dim);
          break;
        }
        case kThreshold: {
          auto* t = reinterpret_cast<const ThresholdArgs*>(a);
          Checker k{arena, "routeThreshold"};
          k.need("runAttn", t->a, size_t(t->rows));
          k.need("runMlp", t->m, size_t(t->rows));
          k.vec("weight", t->w, t->rows);
          k.vec("logits", t->logits, t->rows);
          cpu.routeThreshold(t->a, t->m, t->w, t->logits, t->rows, t->threshold);
          break;
        }
        case kArgmax: {
          auto* t = reinterpret_cast<const ArgmaxArgs*>(a);
          Checker k{arena, "routeArgmax"};
          k.need("run", t->run, size_t(t->rows));
          k.vec("logits", t->logits, 2 * t->rows);
          cpu.routeArgmax(t->run, t->logits, t->rows);
          break;
        }
        case kCompact: {
          auto* t = reinterpret_cast<const CompactArgs*>(a);
          Checker k{arena, "compact"};
          k.need("flags", t->flags, size_t(t->rows));
          k.vec("runIdx", t->runIdx, t->rows);
          k.need("runCount", t->runCount, 4);
          if (t->skipIdx) k.vec("skipIdx", t->skipIdx, t->rows);
          if (t->skipCount) k.need("skipCount", t->skipCount, 4);
          cpu.compact(t->flags, t->rows, t->runIdx, t->runCount, t->skipIdx, t->skipCount);
          break;
        }
        case kSample: {
          auto* t = reinterpret_cast<const SampleArgs*>(a);
          Checker k{arena, "sample"};
          k.vec("tokens", t->tokens, t->rows);
          k.need("logits", t->logits, size_t(t->rows * t->vocab) * 4);
          k.need("params", t->params, size_t(t->rows) * sizeof(SampleRow));
          for (int64_t r = 0; r < t->rows; r++) {
            const SampleRow& p = t->params[r];
            if (t->penalties && p.penaltyCount > 0)
              k.need("penalties", t->penalties + p.penaltyStart, size_t(p.penaltyCount) * sizeof(PenaltyToken));
          }
          cpu.sample(t->tokens, t->logits, t->rows, t->vocab, t->params, t->penalties);
          break;
        }
        case kForget:
          arena.forgetWeights();
          break;
        case kStats: {
          StatsReply s{};
          s.live = arena.live();
          std::strncpy(s.variant, cpuKernelVariant(), sizeof s.variant - 1);
          reply.assign(reinterpret_cast<char*>(&s), reinterpret_cast<char*>(&s) + sizeof s);
          break;
        }
        default:
          throw Error(kErrArg, "unknown request " + std::to_string(h.op));
      }
    } catch (const Error& e) {
      rep.status = 1;
      reply.assign(e.code.begin(), e.code.end());
      reply.push_back('\0');
      reply.insert(reply.end(), e.what(), e.what() + std::strlen(e.what()));
    } catch (const std::exception& e) {
      rep.status = 2;
      reply.assign(e.what(), e.what() + std::strlen(e.what()));
    }
    rep.bytes = reply.size();
    if (!writeAll(fd, &rep, sizeof rep) || (!reply.empty() && !writeAll(fd, reply.data(), reply.size()))) return;
  }
}

}  // namespace

int childMain(int argc, char** argv) {
  if (argc < 6) return 64;
  const int fd = std::atoi(argv[2]);
  char* want = reinterpret_cast<char*>(std::strtoull(argv[3], nullptr, 16));
  const size_t bytes = std::strtoull(argv[4], nullptr, 10);
  const int threads = std::atoi(argv[5]);
  void* got = mmap(want, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  RepHeader hello{0, 0, 0};
  if (got != want) {
    hello.status = 2;
    const std::string msg = "the child could not map its arena at the reserved address";
    hello.bytes = msg.size();
    writeAll(fd, &hello, sizeof hello);
    writeAll(fd, msg.data(), msg.size());
    return 1;
  }
  std::unique_ptr<Ops> cpu(createCpuOps(threads));
  writeAll(fd, &hello, sizeof hello);
  Arena arena(want, bytes);
  serve(fd, *cpu, arena);
  return 0;
}

// ---- the parent's proxy -------------------------------------------------------------------

ChildOps::ChildOps(const std::string& exe, const std::string& variant, int threads) {
  std::string why;
  for (int attempt = 0; attempt < 3 && fd_ < 0; attempt++) {
    reservedBytes_ = kArenaBytes;
    reserved_ = mmap(nullptr, reservedBytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserved_ == MAP_FAILED) throw Error(kErrMemory, "cannot reserve address space for the child backend");
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw Error(kErrArg, "socketpair failed");
    char addr[32], size[32], th[16], fdArg[8] = "3";
    std::snprintf(addr, sizeof addr, "%lx", static_cast<unsigned long>(reinterpret_cast<uintptr_t>(reserved_)));
    std::snprintf(size, sizeof size, "%zu", reservedBytes_);
    std::snprintf(th, sizeof th, "%d", threads);
    std::vector<std::string> env;
    for (char** e = environ; *e; e++)
      if (std::strncmp(*e, "DEPTHGATE_CPU_KERNELS=", 22) != 0) env.push_back(*e);
    env.push_back("DEPTHGATE_CPU_KERNELS=" + variant);
    std::vector<char*> envp;
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string exeCopy = exe, flag = "--parity-child";
    char* argvp[] = {exeCopy.data(), flag.data(), fdArg, addr, size, th, nullptr};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
    const int rc = posix_spawn(&pid_, exe.c_str(), &fa, nullptr, argvp, envp.data());
    posix_spawn_file_actions_destroy(&fa);
    close(sv[1]);
    if (rc != 0) {
      close(sv[0]);
      munmap(reserved_, reservedBytes_);
      throw Error(kErrArg, "cannot start the child backend " + exe + ": " + std::strerror(rc));
    }
    RepHeader hello{};
    if (readAll(sv[0], &hello, sizeof hello) && hello.status == 0) {
      fd_ = sv[0];
      break;
    }
    std::string msg(size_t(hello.bytes), '\0');
    if (hello.bytes) readAll(sv[0], msg.data(), msg.size());
    why = msg.empty() ? "the child exited before it answered" : msg;
    close(sv[0]);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
    munmap(reserved_, reservedBytes_);
    reserved_ = nullptr;
  }
  if (fd_ < 0) throw Error(kErrArg, "the child backend did not start: " + why);
}

ChildOps::~ChildOps() {
  if (fd_ >= 0) close(fd_);
  if (pid_ > 0) waitpid(pid_, nullptr, 0);
  if (reserved_) munmap(reserved_, reservedBytes_);
}

void ChildOps::call(uint32_t op, const void* args, size_t argBytes, const void* extra, size_t extraBytes, void* reply,
                    size_t replyBytes) {
  if (dead_) throw Error("ERR_PARITY_CHILD_DIED", deathReason_);
  ReqHeader h{op, uint32_t(argBytes), extraBytes};
  RepHeader rep{};
  bool ok = writeAll(fd_, &h, sizeof h) && (!argBytes || writeAll(fd_, args, argBytes)) &&
            (!extraBytes || writeAll(fd_, extra, extraBytes)) && readAll(fd_, &rep, sizeof rep);
  if (ok && rep.status == 0) {
    if (rep.bytes != replyBytes) throw Error(kErrArg, "the child backend's reply has the wrong size");
    if (replyBytes && !readAll(fd_, reply, replyBytes)) ok = false;
    if (ok) return;
  }
  if (ok) {
    std::string payload(size_t(rep.bytes), '\0');
    if (rep.bytes && !readAll(fd_, payload.data(), payload.size())) ok = false;
    if (ok && rep.status == 1) {
      const size_t nul = payload.find('\0');
      throw Error(payload.substr(0, nul), nul == std::string::npos ? "" : payload.substr(nul + 1));
    }
    if (ok) throw Error(kErrArg, payload);
  }
  int status = 0;
  dead_ = true;
  deathReason_ = "the child CPU backend stopped answering";
  if (pid_ > 0 && waitpid(pid_, &status, 0) == pid_) {
    deathReason_ = WIFSIGNALED(status)
                       ? "the child CPU backend was killed by signal " + std::to_string(WTERMSIG(status))
                       : "the child CPU backend exited with status " + std::to_string(WEXITSTATUS(status));
    pid_ = -1;
  }
  throw Error("ERR_PARITY_CHILD_DIED", deathReason_);
}

void* ChildOps::alloc(size_t bytes) {
  AllocArgs a{bytes};
  void* p = nullptr;
  call(kAlloc, &a, sizeof a, nullptr, 0, &p, sizeof p);
  return p;
}
void ChildOps::release(void* p) {
  if (!p) return;
  PtrArgs a{p};
  call(kRelease, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::copy(void* dst, const void* src, size_t bytes) {
  CopyArgs a{dst, src, bytes};
  call(kCopy, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::upload(void* dst, const void* host, size_t bytes) {
  UploadArgs a{dst, bytes};
  call(kUpload, &a, sizeof a, host, bytes, nullptr, 0);
}
void ChildOps::download(void* host, const void* src, size_t bytes) {
  UploadArgs a{const_cast<void*>(src), bytes};
  call(kDownload, &a, sizeof a, nullptr, 0, host, bytes);
}
void ChildOps::sync() { call(kSync, nullptr, 0, nullptr, 0, nullptr, 0); }
Weight ChildOps::prepareWeight(const Weight& w) {
  PrepareArgs a{w, reinterpret_cast<uintptr_t>(w.data) % 64};
  Weight out;
  call(kPrepare, &a, sizeof a, w.data, w.bytes(), &out, sizeof out);
  return out;
}
void ChildOps::embed(float* x, const int32_t* tokens, int64_t rows, const Weight& t) {
  EmbedArgs a{x, tokens, rows, t};
  call(kEmbed, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::rmsnorm(float* out, const float* x, RowSet rows, int64_t dim, const float* w, float eps) {
  RmsnormArgs a{out, x, rows, dim, w, eps};
  call(kRmsnorm, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::matmul(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& W,
                      const float* bias, Epilogue ep) {
  MatmulArgs a{out, ldo, x, ldx, rows, W, bias, ep};
  call(kMatmul, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::matmul2(float* out0, int64_t ldo0, float* out1, int64_t ldo1, const float* x, int64_t ldx, RowSet rows,
                       const Weight& W0, const float* b0, const Weight& W1, const float* b1) {
  Matmul2Args a{out0, ldo0, out1, ldo1, x, ldx, rows, W0, b0, W1, b1};
  call(kMatmul2, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::matmulGateUp(float* out, int64_t ldo, const float* x, int64_t ldx, RowSet rows, const Weight& Wg,
                            const float* bg, const Weight& Wu, const float* bu) {
  GateUpArgs a{out, ldo, x, ldx, rows, Wg, bg, Wu, bu};
  call(kGateUp, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::kvWriteRope(float* k, const float* v, const StepRows& step, int layer, const AttnShape& s,
                           const float* invFreq) {
  KvWriteArgs a{k, v, step, layer, s, invFreq};
  call(kKvWrite, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::ropeRows(float* q, int64_t ldq, RowSet rows, const StepRows& step, int nHeads, int headDim,
                        const float* invFreq) {
  RopeArgs a{q, ldq, rows, step, nHeads, headDim, invFreq};
  call(kRope, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::attention(float* out, const float* q, RowSet rows, const StepRows& step, int layer, const AttnShape& s) {
  AttentionArgs a{out, q, rows, step, layer, s};
  call(kAttention, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::tanhRows(float* x, RowSet rows, int64_t dim) {
  TanhArgs a{x, rows, dim};
  call(kTanh, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::routeThreshold(uint8_t* runAttn, uint8_t* runMlp, float* weight, const float* logits, int64_t rows,
                              float threshold) {
  ThresholdArgs a{runAttn, runMlp, weight, logits, rows, threshold};
  call(kThreshold, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::routeArgmax(uint8_t* run, const float* logits, int64_t rows) {
  ArgmaxArgs a{run, logits, rows};
  call(kArgmax, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::compact(const uint8_t* flags, int64_t rows, int32_t* runIdx, int32_t* runCount, int32_t* skipIdx,
                       int32_t* skipCount) {
  CompactArgs a{flags, rows, runIdx, runCount, skipIdx, skipCount};
  call(kCompact, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::sample(int32_t* tokens, float* logits, int64_t rows, int64_t vocab, SampleRow* params,
                      const PenaltyToken* penalties) {
  SampleArgs a{tokens, logits, rows, vocab, params, penalties};
  call(kSample, &a, sizeof a, nullptr, 0, nullptr, 0);
}
void ChildOps::forgetWeights() { call(kForget, nullptr, 0, nullptr, 0, nullptr, 0); }
std::string ChildOps::variant() {
  StatsReply s{};
  call(kStats, nullptr, 0, nullptr, 0, &s, sizeof s);
  return s.variant;
}
size_t ChildOps::liveAllocations() {
  StatsReply s{};
  call(kStats, nullptr, 0, nullptr, 0, &s, sizeof s);
  return size_t(s.live);
}

}  // namespace parity
