/**
 * What the command line may assume about its terminal: whether to write colour (and how many
 * colours), and how to leave when the reader of its output goes away (a closed pipe) or the user
 * presses Ctrl-C.
 */

/** The colour a stream can show: none, 256 colours (xterm's palette) or 24-bit. */
export type ColorMode = 'none' | '256' | '24bit';

/**
 * Colour only where it can be seen, as most CLIs decide it: NO_COLOR (any non-empty value) or
 * TERM=dumb turns it off; FORCE_COLOR=0 turns it off and FORCE_COLOR=1/2/3 on (even when piped);
 * otherwise only on a TTY. 24-bit when COLORTERM says truecolor/24bit (or FORCE_COLOR=3), else 256.
 */
export function colorMode(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): ColorMode {
  if (env.NO_COLOR) return 'none';
  const force = env.FORCE_COLOR;
  if (force === '0' || force === 'false') return 'none';
  const forced = force !== undefined && force !== '';
  if (!forced && (!stream.isTTY || env.TERM === 'dumb')) return 'none';
  if (force === '3' || /^(truecolor|24bit)$/i.test(env.COLORTERM ?? '')) return '24bit';
  return '256';
}

/**
 * A closed pipe on stdout or stderr (`depthgate generate ... | head -1`) ends the process quietly
 * with status 0, as `cat` and `grep` do (they die of SIGPIPE), instead of an unhandled 'error'.
 */
export function exitQuietlyOnClosedPipe(): void {
  for (const s of [process.stdout, process.stderr])
    s.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(0);
      throw e;
    });
}

/** Exit status of a process stopped by Ctrl-C (128 + SIGINT), as shells report it. */
export const SIGINT_STATUS = 130;
