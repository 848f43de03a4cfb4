#include "policy.h"

namespace dg {

std::unique_ptr<Policy> makePolicy(const Engine& e, const PolicySpec& s) {
  switch (s.type) {
    case PolicySpec::None:
      return nullptr;
    case PolicySpec::Static:
      return makeStaticPolicy(e, s);
    case PolicySpec::FlexiDepth:
      return makeFlexiDepthPolicy(e, s);
    case PolicySpec::SkipLayer:
      return makeSkipLayerPolicy(e, s);
    case PolicySpec::D3:
      return makeD3Policy(e, s);
  }
  return nullptr;
}

}  // namespace dg
