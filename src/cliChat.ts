/**
 * `depthgate chat [MODEL_DIR]`: an interactive conversation on a ChatSession. Each line read is a
 * user message; the reply streams to stdout; the history is kept, so each turn computes only the
 * new tokens. Ctrl-C during a reply stops it (the partial reply stays in the history); Ctrl-C at
 * the prompt, or the end of the input (Ctrl-D), ends the chat (status 130 and 0). With input from
 * a pipe it reads one message per line and prints no prompt.
 */
import * as readline from 'node:readline';
import { ChatSession } from './chatSession';
import { DepthgateError, DisposedError } from './errors';
import { parseCommand } from './cliArgs';
import { HELP } from './cliHelp';
import { LOAD_OPTIONS, SAMPLING_OPTIONS, lengthDefault, openModel, policyArg, samplingArgs } from './cliModel';
import { SIGINT_STATUS } from './terminal';

/** Runs the chat; resolves with the exit status. */
export async function chatCommand(argv: string[]): Promise<number> {
  const args = parseCommand('chat', argv, { system: { type: 'string' }, ...SAMPLING_OPTIONS, ...LOAD_OPTIONS });
  if (args.flag('help')) {
    process.stdout.write(HELP.chat!);
    return 0;
  }
  const opts = samplingArgs(args, 'chat');
  const model = await openModel('chat', args);
  lengthDefault(opts, model, 256);
  const interactive = process.stdin.isTTY === true;
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: interactive });
  let reply: AbortController | null = null;
  let status = 0;
  const interrupted = () => {
    if (reply) reply.abort();
    else {
      status = SIGINT_STATUS;
      rl.close();
    }
  };
  rl.on('SIGINT', interrupted); // a terminal's Ctrl-C, which readline takes
  process.on('SIGINT', interrupted); // a signal from elsewhere
  try {
    opts.policy = policyArg(args, model);
    const system = args.str('system');
    using sequence = model.createSequence();
    const session = new ChatSession({ sequence, systemPrompt: system });
    if (interactive) {
      process.stderr.write('(Ctrl-C stops a reply; Ctrl-C at the prompt or Ctrl-D ends the chat)\n');
      rl.setPrompt('> ');
      rl.prompt();
    }
    for await (const line of rl) {
      if (line.trim() !== '') {
        reply = new AbortController();
        try {
          const stream = session.stream(line, { ...opts, signal: reply.signal, stopOnAbort: true });
          for await (const chunk of stream) process.stdout.write(chunk.text);
          const r = await stream.result;
          process.stdout.write('\n');
          process.stderr.write(
            `[${r.usage.completionTokens} tokens (${r.finishReason}), ${r.timings.decodeTokensPerSecond.toFixed(1)} tokens/s, ` +
              `${r.depth.meanLayers.toFixed(2)} of ${model.config.numLayers} layers per token]\n`,
          );
        } catch (e) {
          // A turn the model cannot take (its template refuses it, the conversation outgrew the
          // context) is reported; the chat goes on with its history as it was.
          if (!(e instanceof DepthgateError) || e instanceof DisposedError) throw e;
          process.stderr.write(`depthgate chat: ${e.message} [${e.code}]\n`);
        } finally {
          reply = null;
        }
      }
      if (interactive) rl.prompt();
    }
    if (interactive && status === 0) process.stdout.write('\n');
    return status;
  } finally {
    process.removeListener('SIGINT', interrupted);
    rl.close();
    await model.dispose();
  }
}
