/**
 * Stop strings in generated text as it grows. The text is searched only where a stop string can
 * newly appear (it can end no earlier than the text already handed out), and text that may be the
 * start of a stop string is held back, with its tokens, until later tokens decide.
 */
export class StopDetector {
  constructor(private readonly stops: readonly string[]) {}

  /** True when there is nothing to look for. */
  get empty(): boolean {
    return this.stops.length === 0;
  }

  /**
   * Where the earliest stop string starts in `text`, or -1. The search starts a stop's length
   * before `handedOut`: the text before that was already searched (and given out).
   */
  find(text: string, handedOut: number): number {
    let hit = -1;
    for (const s of this.stops) {
      const at = text.indexOf(s, Math.max(0, handedOut - s.length));
      if (at >= 0 && (hit < 0 || at < hit)) hit = at;
    }
    return hit;
  }

  /**
   * How much of `text` can be handed out: all of it, less the longest tail that is a proper
   * prefix of some stop string (that tail may yet become one).
   */
  safeLength(text: string): number {
    let safe = text.length;
    for (const s of this.stops)
      for (let k = Math.min(s.length - 1, text.length); k > 0; k--)
        if (text.endsWith(s.slice(0, k))) {
          safe = Math.min(safe, text.length - k);
          break;
        }
    return safe;
  }
}
