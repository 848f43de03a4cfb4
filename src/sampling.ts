/**
 * The sampling options in one typed place: what a caller may set, how each is checked, the
 * defaults a model's generation_config.json gives them (as Hugging Face transformers applies
 * them: an option the caller sets wins, `do_sample: false` means greedy), and the parameters the
 * engine's sample op gets for a step. Generation (src/generationRun.ts), the CLI and the server
 * all resolve their sampling here.
 */
import * as path from 'node:path';
import * as fs from 'node:fs';
import { InvalidOptionError, ModelFormatError } from './errors';
import { readJson } from './config';

/** How the next token is picked from the logits. */
export interface SamplingOptions {
  /** 0 picks the most likely token (greedy); higher values sample more freely. Default: the model's generation_config.json, else 0. */
  temperature?: number | undefined;
  /** Sample among the k most likely tokens (0 = all; at most 2^31 - 1). Default: generation_config.json, else 0. */
  topK?: number | undefined;
  /** Sample from the smallest set whose probability reaches p (1 = all). Default: generation_config.json, else 1. */
  topP?: number | undefined;
  /**
   * Hugging Face transformers' repetition penalty (above 0; 1 = off): the logit of every token
   * already in the penalty window is divided by it when positive and multiplied by it otherwise.
   * Default: generation_config.json's repetition_penalty, else 1.
   */
  repetitionPenalty?: number | undefined;
  /** OpenAI's frequency penalty (-2..2, default 0): a token's logit loses this much per occurrence in the penalty window. */
  frequencyPenalty?: number | undefined;
  /** OpenAI's presence penalty (-2..2, default 0): a token's logit loses this much once if it occurs in the penalty window. */
  presencePenalty?: number | undefined;
  /**
   * The tokens the penalties look at: the last N tokens of the context, prompt included (default:
   * the whole context, as transformers does).
   */
  penaltyWindow?: number | undefined;
}

/** The sampling defaults a model's generation_config.json gives (LoadOptions.generationConfig). */
export interface GenerationDefaults {
  /** The file read, or null when the model has none or it was ignored. */
  file: string | null;
  /**
   * The options that take their default from the file, with the values: `do_sample: false` gives
   * temperature 0; `do_sample: true` gives its temperature, top_k and top_p, with transformers'
   * own defaults (1, 50, 1) for those it leaves out; repetition_penalty and max_new_tokens when set.
   */
  options: Partial<Pick<SamplingOptions, 'temperature' | 'topK' | 'topP' | 'repetitionPenalty'>> & {
    maxTokens?: number;
  };
}

/** The sampling a generation ran with (GenerateResult.sampling). */
export interface ResolvedSampling {
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  frequencyPenalty: number;
  presencePenalty: number;
  /** null: the whole context. */
  penaltyWindow: number | null;
  /** The options (of these and maxTokens) whose value came from generation_config.json. */
  fromGenerationConfig: string[];
}

/** @internal The keys of SamplingOptions. */
export const SAMPLING_KEYS = [
  'temperature',
  'topK',
  'topP',
  'repetitionPenalty',
  'frequencyPenalty',
  'presencePenalty',
  'penaltyWindow',
] as const;

const INT32_MAX = 2 ** 31 - 1;

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null) return 'null';
  return Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : String(v);
}

function checkNumber(v: unknown, name: string, min: number, max: number, minExclusive = false): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new InvalidOptionError(name, `must be a finite number, got ${describe(v)}`);
  if (v < min || v > max || (minExclusive && v === min))
    throw new InvalidOptionError(
      name,
      `must be ${minExclusive ? 'above' : 'at least'} ${min} and at most ${max}, got ${v}`,
    );
}

function checkInt(v: unknown, name: string, min: number, max: number): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v))
    throw new InvalidOptionError(name, `must be an integer, got ${describe(v)}`);
  if (v < min || v > max) throw new InvalidOptionError(name, `must be between ${min} and ${max}, got ${v}`);
}

/** @internal Checks the sampling options of an options object; throws InvalidOptionError naming the first bad one. */
export function validateSamplingOptions(o: Record<string, unknown>): void {
  checkNumber(o.temperature, 'temperature', 0, 100);
  checkInt(o.topK, 'topK', 0, INT32_MAX); // int32 natively
  checkNumber(o.topP, 'topP', 0, 1, true);
  checkNumber(o.repetitionPenalty, 'repetitionPenalty', 0, 100, true);
  checkNumber(o.frequencyPenalty, 'frequencyPenalty', -2, 2);
  checkNumber(o.presencePenalty, 'presencePenalty', -2, 2);
  checkInt(o.penaltyWindow, 'penaltyWindow', 1, INT32_MAX);
}

/** transformers' GenerationConfig defaults for the sampling fields a file leaves out. */
const HF_DEFAULTS = { temperature: 1, topK: 50, topP: 1 };

/**
 * @internal Reads the sampling defaults of `dir`/generation_config.json (none when absent).
 * A field of the wrong type or range is a ModelFormatError naming the file and the field.
 */
export function readGenerationDefaults(dir: string): GenerationDefaults {
  const file = path.join(dir, 'generation_config.json');
  if (!fs.existsSync(file)) return { file: null, options: {} };
  const g = readJson(file, 'generation_config.json');
  if (typeof g !== 'object' || g === null || Array.isArray(g))
    throw new ModelFormatError('generation_config.json must hold a JSON object', file);
  const raw = g as Record<string, unknown>;
  const field = (key: string, check: (v: number) => boolean, what: string): number | undefined => {
    const v = raw[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || !check(v))
      throw new ModelFormatError(`'${key}' must be ${what}, got ${JSON.stringify(v)}`, file);
    return v;
  };
  const doSample = raw.do_sample;
  if (doSample !== undefined && doSample !== null && typeof doSample !== 'boolean')
    throw new ModelFormatError(`'do_sample' must be true or false, got ${JSON.stringify(doSample)}`, file);
  const temperature = field('temperature', (v) => v >= 0 && v <= 100, 'a number from 0 to 100');
  const topK = field('top_k', (v) => Number.isInteger(v) && v >= 0 && v <= INT32_MAX, 'an integer >= 0');
  const topP = field('top_p', (v) => v > 0 && v <= 1, 'a number above 0 and at most 1');
  const repetitionPenalty = field('repetition_penalty', (v) => v > 0 && v <= 100, 'a number above 0 (1 = off)');
  const maxNewTokens = field(
    'max_new_tokens',
    (v) => Number.isInteger(v) && v >= 1 && v <= INT32_MAX,
    'an integer >= 1',
  );
  const options: GenerationDefaults['options'] = {};
  if (doSample === true) {
    options.temperature = temperature ?? HF_DEFAULTS.temperature;
    options.topK = topK ?? HF_DEFAULTS.topK;
    options.topP = topP ?? HF_DEFAULTS.topP;
  } else if (doSample === false) {
    options.temperature = 0; // greedy, whatever temperature the file also names
  }
  if (repetitionPenalty !== undefined && repetitionPenalty !== 1) options.repetitionPenalty = repetitionPenalty;
  if (maxNewTokens !== undefined) options.maxTokens = maxNewTokens;
  return { file, options };
}

/** The native sample parameters of a step (the binding's, not part of the public API). */
export interface NativeSampling {
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  frequencyPenalty: number;
  presencePenalty: number;
  /** 0 = the whole context. */
  penaltyWindow: number;
}

/** The penalties of a NativeSampling alone (NativeRequest.penalties). */
export type NativePenalties = Pick<
  NativeSampling,
  'repetitionPenalty' | 'frequencyPenalty' | 'presencePenalty' | 'penaltyWindow'
>;

/** @internal The penalties of `s`, or undefined when all are off. */
export function nativePenalties(s: NativeSampling): NativePenalties | undefined {
  if (s.repetitionPenalty === 1 && s.frequencyPenalty === 0 && s.presencePenalty === 0) return undefined;
  const { repetitionPenalty, frequencyPenalty, presencePenalty, penaltyWindow } = s;
  return { repetitionPenalty, frequencyPenalty, presencePenalty, penaltyWindow };
}

/** @internal The caller's options over the model's defaults over the built-in ones. */
export function resolveSampling(opts: SamplingOptions, defaults: GenerationDefaults['options']): ResolvedSampling {
  const fromGenerationConfig: string[] = [];
  const pick = <K extends 'temperature' | 'topK' | 'topP' | 'repetitionPenalty'>(k: K, builtIn: number): number => {
    const mine = opts[k];
    if (mine !== undefined) return mine;
    const d = defaults[k];
    if (d !== undefined) {
      fromGenerationConfig.push(k);
      return d;
    }
    return builtIn;
  };
  const temperature = pick('temperature', 0);
  // Greedy ignores top-k and top-p: a file's values for them are not in effect then.
  const greedy = !(temperature > 0);
  const r: ResolvedSampling = {
    temperature,
    topK: greedy && opts.topK === undefined ? 0 : pick('topK', 0),
    topP: greedy && opts.topP === undefined ? 1 : pick('topP', 1),
    repetitionPenalty: pick('repetitionPenalty', 1),
    frequencyPenalty: opts.frequencyPenalty ?? 0,
    presencePenalty: opts.presencePenalty ?? 0,
    penaltyWindow: opts.penaltyWindow ?? null,
    fromGenerationConfig,
  };
  return r;
}

/** @internal The sample op's parameters for a resolved sampling. */
export function nativeSampling(s: ResolvedSampling): NativeSampling {
  return {
    temperature: s.temperature,
    topK: s.topK,
    topP: s.topP,
    repetitionPenalty: s.repetitionPenalty,
    frequencyPenalty: s.frequencyPenalty,
    presencePenalty: s.presencePenalty,
    penaltyWindow: s.penaltyWindow ?? 0,
  };
}

/** @internal One line for the CLI footer: the sampling used, and which values came from the file. */
export function describeSampling(s: ResolvedSampling): string {
  const parts = [s.temperature > 0 ? `temperature ${s.temperature}` : 'greedy'];
  if (s.temperature > 0) {
    if (s.topK > 0) parts.push(`top-k ${s.topK}`);
    if (s.topP < 1) parts.push(`top-p ${s.topP}`);
  }
  if (s.repetitionPenalty !== 1) parts.push(`repetition penalty ${s.repetitionPenalty}`);
  if (s.frequencyPenalty !== 0) parts.push(`frequency penalty ${s.frequencyPenalty}`);
  if (s.presencePenalty !== 0) parts.push(`presence penalty ${s.presencePenalty}`);
  if (s.penaltyWindow !== null && (s.repetitionPenalty !== 1 || s.frequencyPenalty !== 0 || s.presencePenalty !== 0))
    parts.push(`over the last ${s.penaltyWindow} tokens`);
  const from = s.fromGenerationConfig;
  return `sampling: ${parts.join(', ')}${from.length ? ` (defaults from generation_config.json: ${from.join(', ')})` : ''}`;
}
