// The harness's common parts (see harness.h).
#include "harness.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <numeric>
#include <sstream>

#include "tensor.h"

namespace parity {

std::vector<int32_t> Rng::distinct(int64_t n, int64_t m) {
  std::vector<int32_t> all(size_t(std::max<int64_t>(m, 0)));
  std::iota(all.begin(), all.end(), 0);
  for (int64_t i = 0; i < n && i < m; i++) std::swap(all[size_t(i)], all[size_t(i + below(m - i))]);
  all.resize(size_t(std::min(n, m)));
  return all;
}

uint16_t toBits(float f, DType t) { return t == DType::BF16 ? dg::f32ToBf16(f) : dg::f32ToF16(f); }

double widen(const void* data, DType t, size_t i) { return double(dg::loadElement(data, t, i)); }

std::string dtypeLabel(DType t) { return t == DType::F32 ? "f32" : t == DType::F16 ? "f16" : "bf16"; }

HostWeight makeWeight(Rng& rng, DType t, int64_t rows, int64_t cols, float scale, size_t misalign) {
  HostWeight w;
  w.dtype = t;
  w.rows = rows;
  w.cols = cols;
  const size_t n = size_t(rows * cols), es = dg::dtypeSize(t);
  w.offset = misalign;
  w.storage.assign(misalign + n * es + 16, 0);
  w.exact.resize(n);
  unsigned char* base = w.storage.data() + misalign;
  for (size_t i = 0; i < n; i++) {
    const float v = rng.value(scale);
    if (t == DType::F32) {
      std::memcpy(base + 4 * i, &v, 4);
    } else {
      const uint16_t h = toBits(v, t);
      std::memcpy(base + 2 * i, &h, 2);
    }
    w.exact[i] = widen(base, t, i);
  }
  return w;
}

std::string RowSpec::describe() const {
  std::ostringstream o;
  switch (kind) {
    case Dense:
      o << "dense " << max;
      break;
    case Counted:
      o << "count " << count << "/" << max;
      break;
    case Indexed:
      o << "count " << count << "/" << max << " + indices";
      break;
    case HostIndexed:
      o << "indices " << max;
      break;
  }
  return o.str();
}

RowSpec makeRows(Rng& rng, RowSpec::Kind k, int64_t max, int64_t count, int64_t inputRows) {
  RowSpec s;
  s.kind = k;
  s.max = max;
  s.count = (k == RowSpec::Dense || k == RowSpec::HostIndexed) ? max : std::min(count, max);
  if (k == RowSpec::Indexed || k == RowSpec::HostIndexed) {
    s.idx = rng.distinct(s.count, inputRows);
    s.idx.resize(size_t(max), kUnreadIndex);
  }
  return s;
}

std::vector<RowSpec> rowVariants(Rng& rng, int64_t max, int64_t inputRows) {
  std::vector<RowSpec> v;
  const int64_t below = max > 0 ? rng.below(max) : 0;  // 0 .. max-1
  v.push_back(makeRows(rng, RowSpec::Dense, max, max, inputRows));
  v.push_back(makeRows(rng, RowSpec::Counted, max, max, inputRows));
  if (max > 0) v.push_back(makeRows(rng, RowSpec::Counted, max, below, inputRows));
  if (max > 1) v.push_back(makeRows(rng, RowSpec::Counted, max, 0, inputRows));
  v.push_back(makeRows(rng, RowSpec::Indexed, max, max, inputRows));
  if (max > 0) v.push_back(makeRows(rng, RowSpec::Indexed, max, below, inputRows));
  v.push_back(makeRows(rng, RowSpec::HostIndexed, max, max, inputRows));
  return v;
}

RowsOnSide placeRows(Ops& o, const RowSpec& s) {
  RowsOnSide r;
  r.set.max = s.max;
  if (s.kind == RowSpec::Counted || s.kind == RowSpec::Indexed) {
    const int32_t n = int32_t(s.count);
    r.count = DevBuf(o, 4);
    r.count.put(&n, 4);
    r.set.count = r.count.as<int32_t>();
  }
  if (!s.idx.empty()) {
    r.idx = upload(o, s.idx);
    r.set.idx = r.idx.as<int32_t>();
  }
  return r;
}

dg::Weight prepared(Ops& o, const HostWeight& w) { return o.prepareWeight(w.view()); }

// ---- report -------------------------------------------------------------------------------

void Report::add(Check c) {
  if (c.pass)
    passed_++;
  else
    failed_++;
  checks_.push_back(std::move(c));
}

int Report::failuresIn(const std::string& prefix) const {
  int n = 0;
  for (const auto& k : checks_)
    if (!k.pass && k.group.compare(0, prefix.size(), prefix) == 0) n++;
  return n;
}

void Report::truncate(size_t m) {
  for (size_t i = m; i < checks_.size(); i++) (checks_[i].pass ? passed_ : failed_)--;
  checks_.resize(std::min(m, checks_.size()));
}

static std::string quote(const std::string& s) {
  std::string o = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\')
      o += '\\', o += ch;
    else if (ch == '\n')
      o += "\\n";
    else if (static_cast<unsigned char>(ch) < 0x20)
      o += ' ';
    else
      o += ch;
  }
  return o + "\"";
}

static std::string num(double x) {
  if (std::isnan(x)) return "\"NaN\"";
  if (std::isinf(x)) return "\"Infinity\"";
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", x);
  return b;
}

void Report::printSummary(const std::string& a, const std::string& b) const {
  std::map<std::string, Group> groups;
  for (const auto& k : checks_) {
    Group& g = groups[k.group];
    g.cases++;
    if (!k.pass) g.failed++;
    if (!(k.err <= g.maxErr[k.side])) g.maxErr[k.side] = k.err;
    g.tol[k.side] = std::max(g.tol[k.side], k.tol);
  }
  std::printf("\nA = %s\nB = %s\n", a.c_str(), b.c_str());
  std::printf("%-24s %7s %7s %12s %12s %10s %10s\n", "op group", "checks", "failed", "max err A", "max err B", "tol A",
              "tol B");
  for (const auto& [name, g] : groups)
    std::printf("%-24s %7d %7d %12.3g %12.3g %10.3g %10.3g\n", name.c_str(), g.cases, g.failed, g.maxErr[0],
                g.maxErr[1], g.tol[0], g.tol[1]);
  int shown = 0;
  for (const auto& k : checks_)
    if (!k.pass && shown++ < 40)
      std::printf("FAIL [%s] %s (%s): err %.3g > tol %.3g %s\n", k.side ? "B" : "A", k.what.c_str(), k.group.c_str(),
                  k.err, k.tol, k.detail.c_str());
  if (shown > 40) std::printf("... and %d more failures\n", shown - 40);
}

std::string Report::json(const std::string& a, const std::string& b, const std::string& extra) const {
  std::map<std::string, Group> groups;
  for (const auto& k : checks_) {
    Group& g = groups[k.group];
    g.cases++;
    if (!k.pass) g.failed++;
    if (!(k.err <= g.maxErr[k.side])) g.maxErr[k.side] = k.err;
    g.tol[k.side] = std::max(g.tol[k.side], k.tol);
  }
  std::ostringstream o;
  o << "{\"a\":" << quote(a) << ",\"b\":" << quote(b) << ",\"passed\":" << passed_ << ",\"failed\":" << failed_;
  if (!extra.empty()) o << "," << extra;
  o << ",\"groups\":[";
  bool first = true;
  for (const auto& [name, g] : groups) {
    o << (first ? "" : ",") << "{\"group\":" << quote(name) << ",\"checks\":" << g.cases << ",\"failed\":" << g.failed
      << ",\"maxErrA\":" << num(g.maxErr[0]) << ",\"maxErrB\":" << num(g.maxErr[1]) << ",\"tolA\":" << num(g.tol[0])
      << ",\"tolB\":" << num(g.tol[1]) << "}";
    first = false;
  }
  o << "],\"failures\":[";
  int shown = 0;
  for (const auto& k : checks_)
    if (!k.pass && shown < 500) {
      o << (shown ? "," : "") << "{\"side\":\"" << (k.side ? "B" : "A") << "\",\"group\":" << quote(k.group)
        << ",\"what\":" << quote(k.what) << ",\"err\":" << num(k.err) << ",\"tol\":" << num(k.tol)
        << ",\"detail\":" << quote(k.detail) << "}";
      shown++;
    }
  o << "]}";
  return o.str();
}

void Ctx::opFailed(int s, const std::string& group, const std::string& what, const std::exception& e) {
  const auto* de = dynamic_cast<const dg::Error*>(&e);
  report.add(Check{group, what, s, INFINITY, 0, false, std::string("threw ") + (de ? de->code + ": " : "") + e.what()});
}

void onBoth(Ctx& c, const std::string& group, const std::string& what, const std::function<void(int)>& f) {
  for (int s = 0; s < 2; s++) {
    if (s == 1 && c.bDead) {
      c.report.add(Check{group, what, 1, INFINITY, 0, false, "not run: backend B threw in 25 cases in a row"});
      continue;
    }
    try {
      f(s);
      if (s == 1) c.bConsecutiveErrors = 0;
    } catch (const std::exception& e) {
      c.opFailed(s, group, what, e);
      if (s == 1 && ++c.bConsecutiveErrors >= 25) c.bDead = true;
    }
  }
}

void compareF32(Ctx& c, int s, const std::string& group, const std::string& what, const std::vector<float>& got,
                const std::vector<float>& init, const std::vector<double>& ref, const std::vector<uint8_t>& written,
                int64_t rowLen, double tol, const std::vector<double>* denom) {
  double worst = 0;
  size_t worstRow = 0, untouchedBad = 0, firstUntouched = size_t(-1), nonFinite = 0;
  const size_t n = got.size(), L = size_t(std::max<int64_t>(rowLen, 1));
  for (size_t r0 = 0, row = 0; r0 < n; r0 += L, row++) {
    double num = 0, den = 0;
    bool any = false, bad = false;
    for (size_t i = r0; i < std::min(n, r0 + L); i++) {
      if (!written[i]) {
        if (std::memcmp(&got[i], &init[i], 4) != 0) {
          untouchedBad++;
          if (firstUntouched == size_t(-1)) firstUntouched = i;
        }
        continue;
      }
      any = true;
      if (!std::isfinite(got[i])) bad = true, nonFinite++;
      const double d = double(got[i]) - ref[i];
      num += d * d;
      den += ref[i] * ref[i];
    }
    if (!any) continue;
    if (denom) den = (*denom)[row] * (*denom)[row];
    const double e = bad ? INFINITY : std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
    if (!(e <= worst)) worst = e, worstRow = row;
  }
  Check k{group, what, s, worst, tol, worst <= tol && untouchedBad == 0, ""};
  if (!k.pass) {
    std::ostringstream o;
    o << "worst row " << worstRow;
    if (nonFinite) o << "; " << nonFinite << " written elements are NaN/inf (unwritten or poisoned reads)";
    if (untouchedBad)
      o << "; " << untouchedBad << " elements outside what the op may write were changed (first at " << firstUntouched
        << ")";
    k.detail = o.str();
  }
  c.report.add(k);
}

}  // namespace parity
