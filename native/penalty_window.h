// The repetition penalties' view of one sequence: how often each token id occurs in the last
// `window` positions of its context (0 = the whole context). Kept on the host and moved along
// incrementally as the context grows, so a decode step costs the tokens that enter and leave the
// window, not a recount; the step uploads the resulting (id, count) list with its other facts.
#pragma once
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "kernels.h"

namespace dg {

class PenaltyWindow {
 public:
  // Makes the counts those of context[max(0, end - window) .. end) (window 0: from 0).
  // `context` holds at least `end` tokens. Moves forward from the last call when it can, else
  // recounts (a different window, or a context that was cut or replaced: see invalidate()).
  void advance(const std::vector<int32_t>& context, int64_t end, int64_t window);
  // The counts as a list (order unspecified, ids distinct), appended to `out`.
  void appendTo(std::vector<PenaltyToken>& out) const;
  size_t distinct() const { return counts_.size(); }
  // The context changed at or before position `from` (truncation, a failed pass): counts that
  // saw it are stale.
  void invalidate(int64_t from) {
    if (end_ > from) end_ = -1;
  }

 private:
  std::unordered_map<int32_t, int32_t> counts_;
  int64_t end_ = -1;  // the context end the counts describe; -1 = none
  int64_t window_ = 0;
};

}  // namespace dg
