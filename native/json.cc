#include "json.h"

#include <stdexcept>

namespace dg {

namespace {

constexpr int kMaxDepth = 64;

struct Parser {
  const char* p;
  const char* end;
  const char* begin;

  [[noreturn]] void fail(const char* why) {
    throw std::runtime_error(std::string(why) + " at byte " + std::to_string(p - begin));
  }
  void skipSpace() {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  }
  bool consume(const char* lit) {
    const char* q = p;
    for (; *lit; lit++, q++)
      if (q >= end || *q != *lit) return false;
    p = q;
    return true;
  }
  static void appendUtf8(std::string& s, uint32_t c) {
    if (c < 0x80) {
      s += char(c);
    } else if (c < 0x800) {
      s += char(0xC0 | (c >> 6));
      s += char(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      s += char(0xE0 | (c >> 12));
      s += char(0x80 | ((c >> 6) & 0x3F));
      s += char(0x80 | (c & 0x3F));
    } else {
      s += char(0xF0 | (c >> 18));
      s += char(0x80 | ((c >> 12) & 0x3F));
      s += char(0x80 | ((c >> 6) & 0x3F));
      s += char(0x80 | (c & 0x3F));
    }
  }
  uint32_t hex4() {
    if (end - p < 4) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++, p++) {
      char c = *p;
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f')
        v |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        v |= uint32_t(c - 'A' + 10);
      else
        fail("bad hex digit in \\u escape");
    }
    return v;
  }
  std::string parseString() {
    p++;  // opening quote
    std::string s;
    for (;;) {
      if (p >= end) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(*p);
      if (c == '"') {
        p++;
        return s;
      }
      if (c < 0x20) fail("control character in string");
      if (c != '\\') {
        s += char(c);
        p++;
        continue;
      }
      p++;
      if (p >= end) fail("unterminated escape");
      char e = *p++;
      switch (e) {
        case '"':
          s += '"';
          break;
        case '\\':
          s += '\\';
          break;
        case '/':
          s += '/';
          break;
        case 'b':
          s += '\b';
          break;
        case 'f':
          s += '\f';
          break;
        case 'n':
          s += '\n';
          break;
        case 'r':
          s += '\r';
          break;
        case 't':
          s += '\t';
          break;
        case 'u': {
          uint32_t c1 = hex4();
          if (c1 >= 0xD800 && c1 < 0xDC00) {
            if (!consume("\\u")) fail("lone high surrogate");
            uint32_t c2 = hex4();
            if (c2 < 0xDC00 || c2 >= 0xE000) fail("bad low surrogate");
            c1 = 0x10000 + ((c1 - 0xD800) << 10) + (c2 - 0xDC00);
          } else if (c1 >= 0xDC00 && c1 < 0xE000) {
            fail("lone low surrogate");
          }
          appendUtf8(s, c1);
          break;
        }
        default:
          fail("bad escape");
      }
    }
  }
  void parseNumber(JsonValue& v) {
    const char* start = p;
    if (p < end && *p == '-') p++;
    if (p >= end || !(*p >= '0' && *p <= '9')) fail("bad number");
    if (*p == '0')
      p++;
    else
      while (p < end && *p >= '0' && *p <= '9') p++;
    if (p < end && *p == '.') {
      p++;
      if (p >= end || !(*p >= '0' && *p <= '9')) fail("bad fraction");
      while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
      p++;
      if (p < end && (*p == '+' || *p == '-')) p++;
      if (p >= end || !(*p >= '0' && *p <= '9')) fail("bad exponent");
      while (p < end && *p >= '0' && *p <= '9') p++;
    }
    v.kind = JsonValue::Number;
    v.text.assign(start, p);
  }
  void parseValue(JsonValue& v, int depth) {
    if (depth > kMaxDepth) fail("nesting too deep");
    skipSpace();
    if (p >= end) fail("unexpected end of input");
    char c = *p;
    if (c == '{') {
      p++;
      v.kind = JsonValue::Object;
      skipSpace();
      if (p < end && *p == '}') {
        p++;
        return;
      }
      for (;;) {
        skipSpace();
        if (p >= end || *p != '"') fail("expected a key string");
        std::string key = parseString();
        skipSpace();
        if (p >= end || *p != ':') fail("expected ':'");
        p++;
        v.members.emplace_back(std::move(key), JsonValue());
        parseValue(v.members.back().second, depth + 1);
        skipSpace();
        if (p < end && *p == ',') {
          p++;
          continue;
        }
        if (p < end && *p == '}') {
          p++;
          return;
        }
        fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      p++;
      v.kind = JsonValue::Array;
      skipSpace();
      if (p < end && *p == ']') {
        p++;
        return;
      }
      for (;;) {
        v.items.emplace_back();
        parseValue(v.items.back(), depth + 1);
        skipSpace();
        if (p < end && *p == ',') {
          p++;
          continue;
        }
        if (p < end && *p == ']') {
          p++;
          return;
        }
        fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.kind = JsonValue::String;
      v.text = parseString();
    } else if (consume("true")) {
      v.kind = JsonValue::Bool;
      v.boolean = true;
    } else if (consume("false")) {
      v.kind = JsonValue::Bool;
    } else if (consume("null")) {
      v.kind = JsonValue::Null;
    } else {
      parseNumber(v);
    }
  }
};

}  // namespace

const JsonValue* JsonValue::find(const std::string& key) const {
  for (auto& m : members)
    if (m.first == key) return &m.second;
  return nullptr;
}

bool JsonValue::asUint(int64_t& out) const {
  if (kind != Number || text.empty() || text.size() > 18) return false;  // < 1e18 cannot overflow
  int64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return true;
}

std::string jsonQuote(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += char(c);
    } else if (c < 0x20) {
      o += "\\u00";
      o += hex[c >> 4];
      o += hex[c & 15];
    } else {
      o += char(c);
    }
  }
  return o + "\"";
}

JsonValue parseJson(const char* data, size_t size) {
  Parser ps{data, data + size, data};
  JsonValue v;
  ps.parseValue(v, 0);
  ps.skipSpace();
  if (ps.p != ps.end) ps.fail("trailing characters after JSON value");
  return v;
}

}  // namespace dg
