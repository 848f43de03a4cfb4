/**
 * Chat templates (tokenizer_config.json's chat_template, Jinja) rendered with @huggingface/jinja
 * under a bound: a template comes with the model, so one that loops (`range(10**8)`, a quadratic
 * join, a string doubled in a loop) must not hold the event loop or exhaust memory. Rendering is
 * synchronous and counts evaluation steps and the length of every string it makes; past
 * {@link templateBudget} it stops with a ModelFormatError naming the file. The bound is
 * deterministic (steps, not time) and grows with the conversation, so any real template with
 * any real conversation stays far below it.
 */
import type * as HfJinja from '@huggingface/jinja' with { 'resolution-mode': 'import' };
import { InvalidOptionError, ModelFormatError } from './errors';

// The package is an ES module that also ships a CommonJS build; this package is CommonJS.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Template, Interpreter, Environment } = require('@huggingface/jinja') as typeof HfJinja;
type Template = InstanceType<typeof Template>;
type Statement = Parameters<InstanceType<typeof Interpreter>['evaluate']>[0];
type Scope = Parameters<InstanceType<typeof Interpreter>['evaluate']>[1];
type RuntimeValue = ReturnType<InstanceType<typeof Interpreter>['evaluate']>;

/** The roles chat templates know; a template may accept others (a tool role), so any string is taken. */
export type ChatRole = 'system' | 'user' | 'assistant' | (string & {});

/** One chat message. */
export interface ChatMessage {
  /** 'system', 'user' or 'assistant' (suggested by editors), or another role the model's template takes. */
  role: ChatRole;
  content: string;
}

/**
 * The most a rendering may do for `messages`: evaluation steps (about 30 per message for Llama 3's
 * template) and characters in any one string it builds (the output included: the messages'
 * text, repeated up to four times, plus a kilobyte of markup per message).
 */
export function templateBudget(messages: ChatMessage[]): { steps: number; chars: number } {
  let chars = 0;
  for (const m of messages) chars += m.content.length + m.role.length;
  return { steps: 20_000 + 200 * messages.length, chars: 1_048_576 + 4 * chars + 1024 * messages.length };
}

class TemplateLimit extends Error {}
class TemplateRaised extends Error {}

/** An interpreter that counts its steps and the size of the strings it makes. */
class BoundedInterpreter extends Interpreter {
  steps = 0;
  constructor(
    scope: Scope,
    private readonly budget: { steps: number; chars: number },
  ) {
    super(scope);
  }
  evaluate(statement: Statement, scope: Scope): RuntimeValue {
    if (++this.steps > this.budget.steps) throw new TemplateLimit(`more than ${this.budget.steps} evaluation steps`);
    const v = super.evaluate(statement, scope);
    if (v.type === 'StringValue' && (v.value as string).length > this.budget.chars)
      throw new TemplateLimit(`a string of more than ${this.budget.chars} characters`);
    return v;
  }
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/** Python's strftime for the fields chat templates use, as @huggingface/jinja's own global does. */
function strftimeNow(format: string): string {
  const d = new Date();
  return String(format).replace(/%[YmdbBHM%]/g, (t) => {
    switch (t) {
      case '%Y':
        return String(d.getFullYear());
      case '%m':
        return pad2(d.getMonth() + 1);
      case '%d':
        return pad2(d.getDate());
      case '%b':
        return new Intl.DateTimeFormat(undefined, { month: 'short' }).format(d);
      case '%B':
        return new Intl.DateTimeFormat(undefined, { month: 'long' }).format(d);
      case '%H':
        return pad2(d.getHours());
      case '%M':
        return pad2(d.getMinutes());
      default:
        return '%';
    }
  });
}

/** A parsed chat template and the file it came from. */
export class ChatTemplate {
  private readonly parsed: Template['parsed'];

  /** Throws ModelFormatError (naming `file`) when the template does not parse. */
  constructor(
    source: string,
    private readonly file: string,
  ) {
    try {
      this.parsed = new Template(source).parsed;
    } catch (e) {
      throw new ModelFormatError(`chat_template is not a valid template: ${(e as Error).message}`, file, e);
    }
  }

  /**
   * Renders `messages` with the variables chat templates expect. A template's own
   * raise_exception (e.g. "roles must alternate") is an InvalidOptionError on `messages`; a
   * template that fails, or goes past its budget, is a ModelFormatError naming the file.
   */
  render(messages: ChatMessage[], vars: Record<string, unknown>): string {
    const budget = templateBudget(messages);
    const scope = new Environment();
    // The globals @huggingface/jinja's Template.render sets, with range() bounded by the budget
    // (a list longer than the steps left could never be iterated) and raise_exception typed.
    const globals: Record<string, unknown> = {
      false: false,
      true: true,
      none: null,
      False: false,
      True: true,
      None: null,
      raise_exception: (message: unknown) => {
        throw new TemplateRaised(String(message));
      },
      range: (start: number, stop?: number, step = 1) => {
        if (stop === undefined) [start, stop] = [0, start];
        if (![start, stop, step].every(Number.isFinite) || step === 0)
          throw new Error('range() needs finite numbers and a non-zero step');
        const n = Math.max(0, Math.ceil((stop - start) / step));
        if (n > budget.steps - interpreter.steps)
          throw new TemplateLimit(`range() of ${n} items, more than the steps left`);
        return Array.from({ length: n }, (_, i) => start + i * step);
      },
      strftime_now: strftimeNow,
    };
    for (const [k, v] of Object.entries({ ...globals, ...vars, messages })) scope.set(k, v);
    const interpreter = new BoundedInterpreter(scope, budget);
    try {
      // (TypeScript loses the inherited members of a class extending a required value.)
      const run = (interpreter as unknown as InstanceType<typeof Interpreter>).run(this.parsed);
      return (run as { value: string }).value;
    } catch (e) {
      if (e instanceof TemplateRaised)
        throw new InvalidOptionError('messages', `the chat template refused them: ${e.message}`);
      if (e instanceof TemplateLimit)
        throw new ModelFormatError(
          `chat_template did not finish within its bound for ${messages.length} message(s) (${e.message}): a template that loops?`,
          this.file,
        );
      throw new ModelFormatError(`chat_template failed: ${(e as Error).message}`, this.file, e);
    }
  }
}
