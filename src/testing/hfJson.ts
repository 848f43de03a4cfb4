/**
 * JSON as Hugging Face's tools write it: Python's json.dumps(indent=2) for config files (floats
 * written as `10000.0`, `1e-05`; keys sorted or in insertion order), serde_json's pretty
 * printing for tokenizer.json.
 */

/** A number that Python would hold as a float (written as `10000.0`, `1e-05`, ...). */
export class PyFloat {
  constructor(readonly value: number) {}
}

export const pyFloat = (v: number): PyFloat => new PyFloat(v);

/** Python's repr() of a finite float. */
export function pythonFloatRepr(v: number): string {
  if (!Number.isFinite(v)) throw new Error(`non-finite float ${v} in JSON`);
  if (v === 0) return Object.is(v, -0) ? '-0.0' : '0.0';
  const expForm = v.toExponential(); // shortest round-trip digits, e.g. "-1.5e-5"
  const m = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(expForm);
  if (!m) throw new Error(`cannot format ${v}`);
  const sign = m[1]!;
  const digits = m[2]! + (m[3] ?? '');
  const exp = Number(m[4]);
  if (exp < -4 || exp >= 16) {
    const mant = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp);
    return `${sign}${mant}e${exp < 0 ? '-' : '+'}${e < 10 ? '0' : ''}${e}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  const intLen = exp + 1;
  if (digits.length <= intLen) return `${sign}${digits}${'0'.repeat(intLen - digits.length)}.0`;
  return `${sign}${digits.slice(0, intLen)}.${digits.slice(intLen)}`;
}

export type JsonLike =
  null | boolean | number | string | PyFloat | JsonLike[] | Map<string, JsonLike> | { [k: string]: JsonLike };

/**
 * Pretty JSON with two-space indentation. Plain objects have their keys sorted when
 * `sortKeys` is set (Python sort_keys=True); Maps keep their insertion order.
 */
export function formatJson(value: JsonLike, sortKeys: boolean, indent = ''): string {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error(`non-finite number ${value} in JSON`);
    return String(value);
  }
  if (typeof value === 'string') return JSON.stringify(value);
  if (value instanceof PyFloat) return pythonFloatRepr(value.value);
  const inner = indent + '  ';
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => inner + formatJson(v, sortKeys, inner)).join(',\n')}\n${indent}]`;
  }
  let entries: [string, JsonLike][];
  if (value instanceof Map) {
    entries = [...value.entries()];
  } else {
    entries = Object.keys(value).map((k) => [k, value[k]!] as [string, JsonLike]);
    if (sortKeys) entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${formatJson(v, sortKeys, inner)}`).join(',\n')}\n${indent}}`;
}

/** Plain JS view of a JsonLike (PyFloat -> number, Map -> object). */
export function toPlain(value: JsonLike): unknown {
  if (value instanceof PyFloat) return value.value;
  if (Array.isArray(value)) return value.map(toPlain);
  if (value instanceof Map) {
    const o: Record<string, unknown> = {};
    for (const [k, v] of value) o[k] = toPlain(v);
    return o;
  }
  if (value !== null && typeof value === 'object') {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(value)) o[k] = toPlain(value[k]!);
    return o;
  }
  return value;
}

/** A Map keeping `entries` in order (an object whose keys must not be sorted). */
export function ordered(entries: [string, JsonLike][]): Map<string, JsonLike> {
  return new Map(entries);
}
