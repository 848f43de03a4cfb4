// A small strict JSON reader for safetensors headers. Depth-limited so hostile input cannot
// exhaust the stack; numbers keep their text so 64-bit offsets are read exactly.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dg {

struct JsonValue {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  std::string text;                                        // String: decoded UTF-8; Number: the literal as written
  std::vector<JsonValue> items;                            // Array
  std::vector<std::pair<std::string, JsonValue>> members;  // Object, in file order

  const JsonValue* find(const std::string& key) const;
  // Non-negative integer that fits in int64 (no fraction, no exponent); false otherwise.
  bool asUint(int64_t& out) const;
};

// Throws std::runtime_error with a position and reason on malformed input.
JsonValue parseJson(const char* data, size_t size);

// `s` as a JSON string literal, quotes included (for the small reports the addon builds).
std::string jsonQuote(const std::string& s);

}  // namespace dg
