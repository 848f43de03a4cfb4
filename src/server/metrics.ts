/**
 * The server's counters and gauges, rendered in the Prometheus text exposition format (version
 * 0.0.4) at GET /metrics. Counters only grow; rates (requests/s, tokens/s) are the scraper's
 * `rate()`, except decode tokens/s, which is also given over the last 10 s for people reading
 * the page directly.
 */

/** Instantaneous values the server reports when scraped. */
export interface GaugeValues {
  /** 1 once the model is loaded. */
  loaded: number;
  /** Requests waiting for a generation slot. */
  queueDepth: number;
  /** Generations running (each holds one sequence). */
  activeSequences: number;
  /** KV-cache bytes reserved by the sequences of running requests. */
  kvReservedBytes: number;
  /** Slots (--parallel) and queue length. */
  parallel: number;
  queueLength: number;
}

const WINDOW_S = 10;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Counters of one server. */
export class ServerMetrics {
  private readonly requests = new Map<string, { endpoint: string; status: number; count: number }>();
  private readonly policies = new Map<string, { tokens: number; layers: number }>();
  private promptTokens = 0;
  private completionTokens = 0;
  private cancelled = 0;
  /** Generated tokens per whole second, for the last WINDOW_S seconds: [second, count]. */
  private readonly window: [number, number][] = [];
  private readonly started = performance.now();

  constructor(private readonly gauges: () => GaugeValues) {}

  /** One answered request (any status, errors included). */
  request(endpoint: string, status: number): void {
    const key = `${endpoint} ${status}`;
    const r = this.requests.get(key);
    if (r) r.count++;
    else this.requests.set(key, { endpoint, status, count: 1 });
  }

  /** A request's prompt was accepted for generation. */
  prompt(tokens: number): void {
    this.promptTokens += tokens;
  }

  /** One token handed out by a running generation (the 10-second throughput window). */
  token(): void {
    const s = Math.floor(performance.now() / 1000);
    const last = this.window[this.window.length - 1];
    if (last && last[0] === s) last[1]++;
    else this.window.push([s, 1]);
    while ((this.window[0]?.[0] ?? Infinity) <= s - WINDOW_S) this.window.shift();
  }

  /**
   * A finished generation: its generated tokens, and the tokens and layers its depth statistics
   * counted (the rows that produced generated tokens), under its policy.
   */
  generation(policy: string, completionTokens: number, depthTokens: number, layers: number): void {
    this.completionTokens += completionTokens;
    const p = this.policies.get(policy);
    if (p) {
      p.tokens += depthTokens;
      p.layers += layers;
    } else this.policies.set(policy, { tokens: depthTokens, layers });
  }

  /** A generation stopped because its client went away (or the server shut down). */
  cancel(): void {
    this.cancelled++;
  }

  /** Tokens generated per second over the last 10 s (or since start, if sooner). */
  decodeTokensPerSecond(): number {
    const nowMs = performance.now();
    const s = Math.floor(nowMs / 1000);
    let n = 0;
    for (const [sec, count] of this.window) if (sec > s - WINDOW_S) n += count;
    const span = Math.min(WINDOW_S, Math.max(1e-3, (nowMs - this.started) / 1000));
    return n / span;
  }

  /** The exposition text. */
  render(): string {
    const g = this.gauges();
    const out: string[] = [];
    const metric = (name: string, type: string, help: string, rows: [string, number][]) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of rows) out.push(`${name}${labels} ${Number.isFinite(v) ? v : 0}`);
    };
    const reqRows = [...this.requests.values()]
      .sort((a, b) => a.endpoint.localeCompare(b.endpoint) || a.status - b.status)
      .map((r): [string, number] => [`{endpoint="${escapeLabel(r.endpoint)}",status="${r.status}"}`, r.count]);
    metric('depthgate_requests_total', 'counter', 'HTTP requests answered, by endpoint and status.', reqRows);
    metric('depthgate_prompt_tokens_total', 'counter', 'Prompt tokens of requests accepted for generation.', [
      ['', this.promptTokens],
    ]);
    metric('depthgate_completion_tokens_total', 'counter', 'Tokens generated.', [['', this.completionTokens]]);
    metric(
      'depthgate_cancelled_total',
      'counter',
      'Generations stopped early because the client disconnected or the server shut down.',
      [['', this.cancelled]],
    );
    metric('depthgate_queue_depth', 'gauge', 'Requests waiting for a generation slot.', [['', g.queueDepth]]);
    metric('depthgate_queue_capacity', 'gauge', 'The most requests that may wait for a slot.', [['', g.queueLength]]);
    metric('depthgate_active_sequences', 'gauge', 'Generations running, each with its own sequence (KV cache).', [
      ['', g.activeSequences],
    ]);
    metric('depthgate_parallel_slots', 'gauge', 'Generations that may run at once.', [['', g.parallel]]);
    metric('depthgate_kv_reserved_bytes', 'gauge', 'KV-cache bytes reserved by the sequences of running requests.', [
      ['', g.kvReservedBytes],
    ]);
    metric(
      'depthgate_decode_tokens_per_second',
      'gauge',
      'Tokens generated per second over the last 10 seconds, all requests together.',
      [['', this.decodeTokensPerSecond()]],
    );
    const pol = [...this.policies.entries()].sort(([a], [b]) => a.localeCompare(b));
    const label = (p: string) => `{policy="${escapeLabel(p)}"}`;
    metric(
      'depthgate_policy_tokens_total',
      'counter',
      'Generated tokens counted for depth, by skip policy.',
      pol.map(([p, v]) => [label(p), v.tokens]),
    );
    metric(
      'depthgate_policy_layers_total',
      'counter',
      'Layers run in full by the passes that produced those tokens, by skip policy.',
      pol.map(([p, v]) => [label(p), v.layers]),
    );
    metric(
      'depthgate_mean_layers_per_token',
      'gauge',
      'Mean layers run per generated token since start, by skip policy.',
      pol.map(([p, v]) => [label(p), v.tokens ? v.layers / v.tokens : 0]),
    );
    metric('depthgate_model_loaded', 'gauge', '1 once the model is loaded and requests are served.', [['', g.loaded]]);
    return out.join('\n') + '\n';
  }
}
