/**
 * Server-sent events in the form OpenAI clients read: one `data: {json}` line and a blank line per
 * event, `data: [DONE]` at the end, and `: ping` comments while nothing else is written for a
 * while (a queued request or a long prompt), so proxies and clients do not time the stream out.
 * Writes respect the socket's backpressure: a slow reader slows only its own generation.
 */
import type { ServerResponse } from 'node:http';

/** An open event stream on one response. */
export class SseStream {
  private timer: NodeJS.Timeout | null = null;
  private ended = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly keepAliveMs: number,
    headers: Record<string, string> = {},
  ) {
    res.writeHead(200, {
      ...headers,
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache',
      Connection: 'keep-alive',
      // nginx buffers proxied responses unless told not to.
      'X-Accel-Buffering': 'no',
    });
    res.flushHeaders();
    this.arm();
  }

  /** True once the stream was ended or its connection closed. */
  get closed(): boolean {
    return this.ended || this.res.destroyed || this.res.writableEnded;
  }

  /** Sends one event; resolves when the socket can take more (at once unless its buffer is full). */
  send(data: unknown): Promise<void> {
    return this.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  /** Ends the stream with `data: [DONE]`. */
  done(): void {
    if (this.closed) return this.stop();
    this.res.end('data: [DONE]\n\n');
    this.stop();
  }

  /** Ends the stream without [DONE] (the connection is gone, or an error event said it all). */
  end(): void {
    if (!this.closed) this.res.end();
    this.stop();
  }

  private write(text: string): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.arm();
    if (this.res.write(text)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.res.off('drain', done);
        this.res.off('close', done);
        resolve();
      };
      this.res.on('drain', done);
      this.res.on('close', done);
    });
  }

  /** (Re)starts the keep-alive timer: a comment goes out after keepAliveMs of silence. */
  private arm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.closed) return;
      this.res.write(': ping\n\n');
      this.arm();
    }, this.keepAliveMs);
    this.timer.unref();
  }

  private stop(): void {
    this.ended = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
