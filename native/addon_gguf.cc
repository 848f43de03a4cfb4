#include "addon_gguf.h"

#include <cstring>

#include "addon_dispatcher.h"
#include "gguf.h"

namespace dg {

namespace {

// Integers beyond 2^53 become BigInt, so that no value changes on its way to JavaScript.
Napi::Value integer(Napi::Env env, bool isSigned, uint64_t u, int64_t i) {
  const uint64_t safe = uint64_t(1) << 53;
  if (isSigned ? (i > -int64_t(safe) && i < int64_t(safe)) : u < safe)
    return Napi::Number::New(env, isSigned ? double(i) : double(u));
  return isSigned ? Napi::BigInt::New(env, i) : Napi::BigInt::New(env, u);
}

bool signedType(GgufType t) {
  return t == GgufType::I8 || t == GgufType::I16 || t == GgufType::I32 || t == GgufType::I64;
}

template <class T, class A>
Napi::Value typedArray(Napi::Env env, const GgufValue& v) {
  auto a = A::New(env, size_t(v.count));
  if (v.count) std::memcpy(a.Data(), v.raw.data(), size_t(v.count) * sizeof(T));
  return a;
}

Napi::Value valueToJs(Napi::Env env, const GgufValue& v) {
  switch (v.type) {
    case GgufType::STRING:
      return Napi::String::New(env, v.str);
    case GgufType::BOOL:
      return Napi::Boolean::New(env, v.u != 0);
    case GgufType::F32:
    case GgufType::F64:
      return Napi::Number::New(env, v.f);
    case GgufType::ARRAY:
      break;
    default:
      return integer(env, signedType(v.type), v.u, v.i);
  }
  // Numeric arrays as typed arrays (token scores and types of a large vocabulary stay compact).
  switch (v.elemType) {
    case GgufType::STRING: {
      auto a = Napi::Array::New(env, v.strings.size());
      for (size_t k = 0; k < v.strings.size(); k++) a.Set(uint32_t(k), Napi::String::New(env, v.strings[k]));
      return a;
    }
    case GgufType::U8:
      return typedArray<uint8_t, Napi::Uint8Array>(env, v);
    case GgufType::I8:
      return typedArray<int8_t, Napi::Int8Array>(env, v);
    case GgufType::U16:
      return typedArray<uint16_t, Napi::Uint16Array>(env, v);
    case GgufType::I16:
      return typedArray<int16_t, Napi::Int16Array>(env, v);
    case GgufType::U32:
      return typedArray<uint32_t, Napi::Uint32Array>(env, v);
    case GgufType::I32:
      return typedArray<int32_t, Napi::Int32Array>(env, v);
    case GgufType::F32:
      return typedArray<float, Napi::Float32Array>(env, v);
    case GgufType::F64:
      return typedArray<double, Napi::Float64Array>(env, v);
    case GgufType::U64:
      return typedArray<uint64_t, Napi::BigUint64Array>(env, v);
    case GgufType::I64:
      return typedArray<int64_t, Napi::BigInt64Array>(env, v);
    case GgufType::BOOL: {
      auto a = Napi::Array::New(env, size_t(v.count));
      for (size_t k = 0; k < v.count; k++) a.Set(uint32_t(k), Napi::Boolean::New(env, v.raw[k] != 0));
      return a;
    }
    default:
      return env.Undefined();
  }
}

}  // namespace

Napi::Value ReadGgufHeader(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    makeError(env, kErrArg, "readGgufHeader(path): path must be a string", "").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>();
  CaughtError err;
  std::unique_ptr<GgufFile> f;
  if (!runCaught([&] { f = std::make_unique<GgufFile>(path, false); }, err)) {
    err.toJs(env).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const GgufHeader& h = f->header();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", Napi::Number::New(env, h.version));
  o.Set("alignment", Napi::Number::New(env, double(h.alignment)));
  Napi::Object md = Napi::Object::New(env);
  Napi::Object types = Napi::Object::New(env);
  for (auto& kv : h.metadata) {
    // Defined, not assigned: a key such as "__proto__" becomes an own property like any other.
    md.DefineProperty(Napi::PropertyDescriptor::Value(kv.first, valueToJs(env, kv.second), napi_enumerable));
    std::string t = ggufTypeName(kv.second.type);
    if (kv.second.type == GgufType::ARRAY) t += std::string("[") + ggufTypeName(kv.second.elemType) + "]";
    types.DefineProperty(Napi::PropertyDescriptor::Value(kv.first, Napi::String::New(env, t), napi_enumerable));
  }
  o.Set("metadata", md);
  o.Set("metadataTypes", types);
  auto ts = Napi::Array::New(env, h.tensors.size());
  for (size_t k = 0; k < h.tensors.size(); k++) {
    const GgufTensorInfo& t = h.tensors[k];
    Napi::Object to = Napi::Object::New(env);
    to.Set("name", Napi::String::New(env, t.name));
    const GgmlTypeInfo* ti = ggmlTypeInfo(t.type);
    to.Set("type", Napi::String::New(env, ti ? ti->name : "unknown"));
    auto ne = Napi::Array::New(env, t.ne.size());
    for (size_t d = 0; d < t.ne.size(); d++) ne.Set(uint32_t(d), Napi::Number::New(env, double(t.ne[d])));
    to.Set("dims", ne);
    to.Set("offset", Napi::Number::New(env, double(t.offset)));
    to.Set("bytes", Napi::Number::New(env, double(t.bytes)));
    ts.Set(uint32_t(k), to);
  }
  o.Set("tensors", ts);
  return o;
}

}  // namespace dg
