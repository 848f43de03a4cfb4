/**
 * Command-line argument handling shared by the subcommands: parsing (with negative numbers taken
 * as values, as users of llama.cpp's CLI expect), typed values, escapes in strings, and the usage
 * error that prints one line and a hint instead of the whole usage.
 */
import { parseArgs } from 'node:util';

/** A bad command line: printed as one line, with a hint naming the command's --help; exit code 2. */
export class UsageError extends Error {
  constructor(
    message: string,
    /** The subcommand whose help the hint names ('' for the top level). */
    readonly command = '',
  ) {
    super(message);
  }
}

/** The options of a subcommand: name to kind (a string value, a flag) and whether it repeats. */
export type Options = Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }>;

/** A parsed command line, read with typed getters. */
export class Args {
  constructor(
    private readonly values: Record<string, string | boolean | (string | boolean)[] | undefined>,
    readonly positionals: string[],
  ) {}
  str(name: string): string | undefined {
    const v = this.values[name];
    return typeof v === 'string' ? v : undefined;
  }
  flag(name: string): boolean {
    return this.values[name] === true;
  }
  list(name: string): string[] | undefined {
    const v = this.values[name];
    return Array.isArray(v) ? v.map(String) : undefined;
  }
  has(name: string): boolean {
    return this.values[name] !== undefined;
  }
}

/**
 * parseArgs for a subcommand, with --help/-h added. A value that starts with '-' followed by a
 * digit or '.' after an option that takes a value is that option's value (`--temperature -1` is
 * then a range error, not "ambiguous"). Parse errors become UsageErrors of `command`.
 */
export function parseCommand(command: string, argv: string[], options: Options): Args {
  const all: Options = { ...options, help: { type: 'boolean', short: 'h' } };
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = argv[i + 1];
    const name = a.startsWith('--') ? a.slice(2) : undefined;
    if (
      name !== undefined &&
      !name.includes('=') &&
      all[name]?.type === 'string' &&
      next !== undefined &&
      /^-[\d.]/.test(next)
    ) {
      args.push(`${a}=${next}`);
      i++;
    } else args.push(a);
  }
  try {
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options: all, strict: true });
    return new Args(values, positionals);
  } catch (e) {
    throw new UsageError((e as Error).message, command);
  }
}

/** An integer option (undefined when absent). */
export function intArg(
  v: string | undefined,
  name: string,
  min: number,
  command: string,
  max = 2 ** 31 - 1,
): number | undefined {
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v) || Number(v) < min || Number(v) > max)
    throw new UsageError(
      `--${name} must be an integer from ${min}${max < 2 ** 31 - 1 ? ` to ${max}` : ' up'}, got '${v}'`,
      command,
    );
  return Number(v);
}

/** A number option (undefined when absent), at least `min` when given. */
export function numArg(v: string | undefined, name: string, command: string, min = -Infinity): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${v}'`, command);
  if (n < min) throw new UsageError(`--${name} must be at least ${min}, got ${v}`, command);
  return n;
}

/**
 * Backslash escapes in a command-line string, as a shell user types them: \n \r \t \\ \0, \xHH
 * and \uHHHH (`--stop '\n'` stops at a newline). Any other backslash is kept as it is.
 */
export function unescape(s: string): string {
  return s.replace(/\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[nrt0\\])/g, (_, e: string) => {
    switch (e[0]) {
      case 'n':
        return '\n';
      case 'r':
        return '\r';
      case 't':
        return '\t';
      case '0':
        return '\0';
      case '\\':
        return '\\';
      default:
        return String.fromCharCode(parseInt(e.slice(1), 16));
    }
  });
}
