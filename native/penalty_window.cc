#include "penalty_window.h"

#include <algorithm>

namespace dg {

void PenaltyWindow::advance(const std::vector<int32_t>& context, int64_t end, int64_t window) {
  const auto first = [&](int64_t e) { return window > 0 ? std::max<int64_t>(0, e - window) : int64_t(0); };
  if (end_ < 0 || window != window_ || end < end_) {
    counts_.clear();
    for (int64_t p = first(end); p < end; p++) counts_[context[size_t(p)]]++;
  } else {
    // Slide [first(end_), end_) to [first(end), end): add what enters, drop what leaves.
    for (int64_t p = end_; p < end; p++) counts_[context[size_t(p)]]++;
    for (int64_t p = first(end_); p < first(end); p++) {
      auto it = counts_.find(context[size_t(p)]);
      if (--it->second == 0) counts_.erase(it);
    }
  }
  end_ = end;
  window_ = window;
}

void PenaltyWindow::appendTo(std::vector<PenaltyToken>& out) const {
  out.reserve(out.size() + counts_.size());
  for (const auto& [id, n] : counts_) out.push_back(PenaltyToken{id, n});
}

}  // namespace dg
