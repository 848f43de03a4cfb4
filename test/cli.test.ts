/** The depthgate command line, run as a user runs it (node dist/cli.js). */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ChatSession, defaultModelDir, loadModel } from '../src';
import { loadReference, referenceLogits } from './reference/reference';
import { quantizeActivation, quantizedReference } from './reference/quantize';
import { cleanup, relError, tinyModel, tmpDir } from './helpers';

afterAll(cleanup);

const cli = path.join(__dirname, '..', 'dist', 'cli.js');
function run(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [cli, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 60000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('generate with no model directory uses the embedded trained model and its FlexiDepth routers', () => {
  const r = run(['generate', '--prompt', 'And God said', '--max-tokens', '12']);
  expect(r.code).toBe(0);
  expect(r.stderr).toMatch(/default model \(12-layer .*FlexiDepth routers\)/);
  expect(r.stdout.startsWith('And God said')).toBe(true);
  expect(r.stderr).toMatch(/12 generated/);
  // The routers really skip: fewer than all 12 layers per token on average.
  const mean = Number(/([\d.]+) of 12 layers per token/.exec(r.stderr)![1]);
  expect(mean).toBeLessThan(12);
  expect(mean).toBeGreaterThan(6);
  // The model's generation_config.json sets the sampling, and the footer says so.
  expect(r.stderr).toMatch(
    /sampling: temperature 0\.8, top-k 50, top-p 0\.95 \(defaults from generation_config\.json: temperature, topK, topP\)/,
  );
  // The same seed gives the same text again; greedy with --no-generation-config or --temperature 0.
  const seeded = ['generate', '--prompt', 'And God said', '--max-tokens', '12', '--seed', '3'];
  expect(run(seeded).stdout).toBe(run(seeded).stdout);
  const greedy = run(['generate', '--prompt', 'And God said', '--max-tokens', '12', '--no-generation-config']);
  expect(greedy.stderr).toMatch(/\[sampling: greedy\]/);
  expect(run(['generate', '--prompt', 'And God said', '--max-tokens', '12', '--temperature', '0']).stdout).toBe(
    greedy.stdout,
  );
  // A penalty from the command line: named in the footer, and it changes the greedy text.
  const penalised = run([
    'generate',
    '--prompt',
    'And God said',
    '--max-tokens',
    '40',
    '--temperature',
    '0',
    '--repetition-penalty',
    '1.3',
    '--presence-penalty',
    '0.5',
  ]);
  expect(penalised.code).toBe(0);
  expect(penalised.stderr).toMatch(/sampling: greedy, repetition penalty 1\.3, presence penalty 0\.5\]/);
  expect(penalised.stdout).not.toBe(
    run(['generate', '--prompt', 'And God said', '--max-tokens', '40', '--temperature', '0']).stdout,
  );
  // --policy none overrides the default policy: every token runs all 12 layers.
  const full = run(['generate', '--prompt', 'And God said', '--max-tokens', '4', '--policy', 'none']);
  expect(full.stderr).toMatch(/12\.00 of 12 layers per token/);
});

test('--show-depth colours each generated token by its depth; --trace FILE.html writes the page', () => {
  const dir = tinyModel({ layers: 4, seed: 21 });
  const html = path.join(tmpDir(), 'depth.html');
  // Piped output has colour only when forced (FORCE_COLOR=3: 24-bit).
  const r = run(
    [
      'generate',
      dir,
      '--prompt',
      'Once',
      '--max-tokens',
      '8',
      '--policy',
      'd3:alpha=0.9',
      '--show-depth',
      '--trace',
      html,
    ],
    { NO_COLOR: '', FORCE_COLOR: '3' },
  );
  expect(r.code).toBe(0);
  expect(r.stdout.startsWith('Once')).toBe(true);
  // 24-bit background colours on the generated text, at least two different depths (D3 decays), and a legend.
  const colours = new Set([...r.stdout.matchAll(/\x1b\[48;2;(\d+;\d+;\d+)m/g)].map((m) => m[1]));
  expect(colours.size).toBeGreaterThanOrEqual(2);
  expect(r.stderr).toMatch(/layers: /); // the legend goes to stderr
  const page = fs.readFileSync(html, 'utf8');
  expect(page).toMatch(/^<!DOCTYPE html>/i);
  expect((page.match(/<span class="tok"/g) ?? []).length).toBe(8);
  expect(page).toMatch(/d3:alpha=0\.9/);
  // A trace file that cannot be written is a usage error before any generation.
  const bad = run(['generate', dir, '--prompt', 'Once', '--trace', path.join(tmpDir(), 'no', 'such', 'dir', 'x.html')]);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/--trace .*x\.html: ENOENT/);
  expect(bad.stdout).toBe('');
  // Without --show-depth the output is plain text.
  const plain = run(['generate', dir, '--prompt', 'Once', '--max-tokens', '8', '--policy', 'd3:alpha=0.7'], {
    FORCE_COLOR: '3',
  });
  expect(plain.stdout).not.toMatch(/\x1b\[/);
});

test('--trace FILE writes one JSON line per generated token in the documented format', async () => {
  const dir = tinyModel({ layers: 4, seed: 21 });
  const file = path.join(tmpDir(), 'depth.jsonl');
  const r = run([
    'generate',
    dir,
    '--prompt',
    'Once',
    '--max-tokens',
    '8',
    '--policy',
    'd3:alpha=0.7',
    '--trace',
    file,
  ]);
  expect(r.code).toBe(0);
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  expect(lines.pop()).toBe(''); // every line ends with a newline
  const rows = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  expect(rows).toHaveLength(8);
  // The same generation through the API: the tokens, text and layers the trace must hold.
  const model = await loadModel(dir);
  const chunks: { token: number; text: string; layers: number; executed: Uint8Array }[] = [];
  await model.generate('Once', {
    maxTokens: 8,
    policy: { type: 'd3', alpha: 0.7 },
    onToken: (c) => void chunks.push(c),
  });
  await model.dispose();
  rows.forEach((row, i) => {
    expect(Object.keys(row)).toEqual(['index', 'token', 'text', 'layers', 'executed', 'routerWeights']);
    expect(row.index).toBe(i);
    expect(row.token).toBe(chunks[i].token);
    expect(row.text).toBe(chunks[i].text);
    expect(row.executed).toEqual(Array.from(chunks[i].executed));
    expect(row.layers).toBe((row.executed as number[]).reduce((a, b) => a + b, 0));
    expect(row.routerWeights).toEqual([null, null, null, null]); // D3 has no router weights
  });
  expect(rows.map((row) => row.text).join('')).toBe(r.stdout.slice('Once'.length).replace(/\n$/, ''));
  expect(new Set(rows.map((row) => row.layers)).size).toBeGreaterThan(1); // D3 decays
});

test('generate with sampling options and a seed is reproducible', () => {
  const dir = tinyModel({ seed: 2 });
  const args = [
    'generate',
    dir,
    '-p',
    'Once',
    '--max-tokens',
    '8',
    '--temperature',
    '0.9',
    '--top-k',
    '40',
    '--top-p',
    '0.95',
    '--seed',
    '5',
  ];
  const a = run(args);
  const b = run(args);
  expect(a.code).toBe(0);
  expect(a.stdout).toBe(b.stdout);
});

test('info reports architecture, parameters, dtype and memory', () => {
  const dir = tinyModel({ arch: 'qwen2', dtype: 'bf16', layers: 3 });
  const r = run(['info', dir]);
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/architecture: Qwen2ForCausalLM \(3 layers/);
  expect(r.stdout).toMatch(/parameters: [\d,]+/);
  expect(r.stdout).toMatch(/dtype: BF16/);
  // Mapped, or read into the CPU backend's copies (where the kernel gives huge pages), which a
  // "CPU layout" line then describes.
  expect(r.stdout).toMatch(/weights: .* (memory-mapped|read) from 1 file/);
  if (/weights: .* read from/.test(r.stdout))
    expect(r.stdout).toMatch(
      /CPU layout: .*matrices (repacked|copied).* in \d+ ms, (in memory advised for 2 MB huge pages|on 4 KB pages)/,
    );
  expect(r.stdout).toMatch(/CPU kernels (avx512|avx2|scalar)/);
});

test('logits --json prints one row per position matching the reference', () => {
  const dir = tinyModel({ seed: 4 });
  const r = run(['logits', dir, '--tokens', '5,17,200,3', '--json', '--kv-cache', 'f32']);
  expect(r.code).toBe(0);
  const out = JSON.parse(r.stdout) as { logits: number[][] };
  const want = referenceLogits(loadReference(dir), [5, 17, 200, 3]);
  expect(out.logits).toHaveLength(4);
  out.logits.forEach((row, i) => expect(relError(row, want[i])).toBeLessThan(1e-5));
});

test('--weights q8_0 quantizes on load: info says so, logits match the reference on the quantized model', () => {
  const dir = tinyModel({ seed: 4 });
  const info = run(['info', dir, '--weights', 'q8_0']);
  expect(info.code).toBe(0);
  expect(info.stdout).toMatch(/dtype: Q8_0 \(from F32\)/);
  expect(info.stdout).toMatch(/quantized on load to q8_0 in \d+ ms/);
  const r = run(['logits', dir, '--tokens', '5,17,200,3', '--json', '--kv-cache', 'f32', '--weights', 'q4_0']);
  expect(r.code).toBe(0);
  const out = JSON.parse(r.stdout) as { logits: number[][] };
  const want = referenceLogits(quantizedReference(loadReference(dir), 'q4_0'), [5, 17, 200, 3], {
    matmulInput: quantizeActivation,
  });
  out.logits.forEach((row, i) => expect(relError(row, want[i])).toBeLessThan(1e-5));
  const bad = run(['info', dir, '--weights', 'q5_k']);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/--weights must be stored, q8_0, q4_0, q4_k or q6_k, got 'q5_k'/);
  // q4_k on a model 256 wide: Q4_K_M's mix of Q4_K and Q6_K (the LM head, layer 1's v and down).
  const wide = tinyModel({ seed: 4, hidden: 256, intermediate: 512 });
  const k = run(['info', wide, '--weights', 'q4_k']);
  expect(k.code).toBe(0);
  expect(k.stdout).toMatch(/dtype: Q4_K\+Q6_K \(from F32\)/);
  expect(k.stdout).toMatch(/quantized on load to q4_k in \d+ ms/);
});

test('bad arguments and bad models give a message and a non-zero exit, not a crash', () => {
  const dir = tinyModel();
  const bad = run(['generate', dir, '--prompt', 'x', '--temperature', 'hot']);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/--temperature must be a number/);
  const unknown = run(['generate', dir, '--prompt', 'x', '--bogus']);
  expect(unknown.code).toBe(2);
  expect(unknown.stderr).toMatch(/bogus/);
  const missing = run(['info', path.join(dir, 'nope')]);
  expect(missing.code).toBe(1);
  expect(missing.stderr).toMatch(/model directory does not exist \[ERR_DEPTHGATE_MODEL_IO\]/);
  const cmd = run(['frobnicate']);
  expect(cmd.code).toBe(2);
});

describe('behaving like a CLI', () => {
  const version = (
    JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }
  ).version;

  test('every subcommand has its own --help (exit 0) listing the options it takes; --version', () => {
    const wants: Record<string, RegExp[]> = {
      generate: [
        /--prompt/,
        /--chat/,
        /--system/,
        /--stop TEXT.*escapes/,
        /--show-depth/,
        /--threads/,
        /--kv-cache/,
        /--addon/,
      ],
      chat: [/--system/, /--max-tokens/, /Ctrl-C/, /--policy/],
      info: [/--addon/, /--backend/],
      logits: [/--prompt/, /--tokens/, /--json/, /--top/, /--threads/],
      eval: [/--text/, /--threads/, /--window/, /--kv-cache/],
      serve: [/--port/, /--parallel/],
    };
    for (const [cmd, patterns] of Object.entries(wants)) {
      const r = run([cmd, '--help']);
      expect([cmd, r.code]).toEqual([cmd, 0]);
      expect(r.stdout.startsWith(`Usage: depthgate ${cmd}`)).toBe(true);
      for (const p of patterns) expect([cmd, r.stdout]).toEqual([cmd, expect.stringMatching(p)]);
    }
    expect(run(['--version'])).toMatchObject({ code: 0, stdout: `${version}\n` });
    expect(run(['--help'])).toMatchObject({
      code: 0,
      stdout: expect.stringMatching(/chat\s+an interactive conversation/),
    });
  });

  test('a bad command line prints one line and a hint, exit 2; negative numbers are values', () => {
    const cases: [string[], RegExp][] = [
      [['generate', '--prompt', 'x', '--temperature', '-1'], /--temperature must be at least 0, got -1/],
      [['generate', '--prompt', 'x', '--system', 'be brief'], /--system needs --chat/],
      [['generate', '--prompt', 'x', '--bogus'], /bogus/],
      [['generate'], /needs --prompt/],
      [['logits', '--tokens', '1,2', '--prompt', 'x'], /--prompt TEXT or --tokens/],
      [['eval', '--threads', '0', '--text', 'x'], /--text x: ENOENT|--threads/],
      [['frobnicate'], /unknown command 'frobnicate'/],
    ];
    for (const [args, message] of cases) {
      const r = run(args);
      expect([args, r.code]).toEqual([args, 2]);
      const lines = r.stderr.trimEnd().split('\n');
      expect([args, lines.length]).toEqual([args, 2]);
      expect(lines[0]).toMatch(message);
      expect(lines[1]).toMatch(/`depthgate (\w+ )?--help` lists the options/);
      expect(r.stdout).toBe('');
    }
  });

  test('a closed pipe ends the command quietly with status 0', async () => {
    const child = spawn(process.execPath, [cli, 'generate', '--prompt', 'And God said', '--max-tokens', '200'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.once('data', () => child.stdout.destroy()); // what `| head -c 1` does
    const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
    expect(stderr).not.toMatch(/EPIPE|Unhandled/);
    expect(code).toBe(0);
  });

  test('Ctrl-C stops generate: what was made is printed and the status is 130', async () => {
    const child = spawn(
      process.execPath,
      [cli, 'generate', '--prompt', 'And God said', '--max-tokens', '250', '--policy', 'none'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.once('data', () => child.kill('SIGINT'));
    const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
    expect(code).toBe(130);
    expect(stderr).toMatch(/generated \(abort\)/);
  });

  test('--show-depth: no colour when piped, with NO_COLOR or TERM=dumb; the depth follows each token instead', () => {
    const envs: Record<string, string>[] = [
      { NO_COLOR: '', FORCE_COLOR: '' },
      { NO_COLOR: '1', FORCE_COLOR: '1' },
      { NO_COLOR: '', FORCE_COLOR: '0' },
    ];
    for (const env of envs) {
      const r = run(
        ['generate', '--prompt', 'And God said', '--max-tokens', '6', '--show-depth', '--temperature', '0'],
        env,
      );
      expect(r.code).toBe(0);
      expect(r.stdout + r.stderr).not.toMatch(/\x1b\[/);
      expect(r.stdout).toMatch(/^And God said \S+?[⁰¹²³⁴⁵⁶⁷⁸⁹]+ /);
      expect(r.stderr).toMatch(/the number after each token is the layers it ran, of 12/);
    }
    // Forced 256-colour output uses the xterm palette.
    const c = run(['generate', '--prompt', 'And God said', '--max-tokens', '6', '--show-depth'], {
      NO_COLOR: '',
      FORCE_COLOR: '1',
      COLORTERM: '',
    });
    expect(c.stdout).toMatch(/\x1b\[48;5;\d+m/);
  });

  test("--stop understands escapes: '\\n' stops at the end of the line", () => {
    const r = run(['generate', '--prompt', 'And God said', '--max-tokens', '60', '--stop', '\\n']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/generated \(stop\)/);
    expect(r.stdout.trimEnd()).not.toMatch(/\n/);
  });

  test('logits defaults to the default model, takes --prompt, and prints a table without --json', () => {
    const r = run(['logits', '--prompt', 'And God said', '--top', '2']);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^pos\s+token\s+text\s+most likely next \(logit\)\s+layers of 12$/);
    expect(lines).toHaveLength(1 + 4 + 1); // header, one row per token of "And God said", the policy line
    expect(lines[4]).toMatch(/^\s*3\s+\d+\s+" said"\s+"[^"]*" -?\d+\.\d\d, "[^"]*" -?\d+\.\d\d\s+\d+$/);
  });

  test('--policy skiplayer on the default model runs its shipped SkipLayer add-on', () => {
    // Greedy: sampled runs of 6 tokens ran all 12 layers in about 1 of 4 runs.
    const r = run([
      'generate',
      '--prompt',
      'And God said',
      '--max-tokens',
      '6',
      '--policy',
      'skiplayer',
      '--temperature',
      '0',
    ]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/SkipLayer routers/);
    const mean = Number(/([\d.]+) of 12 layers per token/.exec(r.stderr)![1]);
    expect(mean).toBeLessThan(12);
  });

  test('chat: one message per input line, the history kept (the replies are those of a ChatSession)', async () => {
    // Greedy on both sides: the default model's generation_config.json samples otherwise.
    const child = spawnSync(
      process.execPath,
      [cli, 'chat', '--max-tokens', '12', '--policy', 'none', '--temperature', '0'],
      {
        input: 'In the beginning God created the heaven and the earth.\nAnd God said\n',
        encoding: 'utf8',
        timeout: 60000,
      },
    );
    expect(child.status).toBe(0);
    const m = await loadModel(defaultModelDir(), { threads: 1 });
    try {
      using seq = m.createSequence();
      const session = new ChatSession({ sequence: seq });
      const greedy = { maxTokens: 12, policy: { type: 'none' } as const, temperature: 0 };
      const a = await session.prompt('In the beginning God created the heaven and the earth.', greedy);
      const b = await session.prompt('And God said', greedy);
      expect(child.stdout).toBe(`${a.text}\n${b.text}\n`);
    } finally {
      await m.dispose();
    }
  });
});

test('chat: Ctrl-C stops the reply, a second Ctrl-C (at the prompt) ends the chat with 130', async () => {
  const child = spawn(process.execPath, [cli, 'chat', '--max-tokens', '250', '--policy', 'none'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let interrupts = 0;
  let quiet: NodeJS.Timeout | undefined;
  child.stdout.on('data', () => {
    if (interrupts === 0) {
      interrupts++;
      child.kill('SIGINT'); // during the reply
    }
    // Once the output has been quiet for a while the reply is over: the second Ctrl-C is at the prompt.
    clearTimeout(quiet);
    quiet = setTimeout(() => {
      interrupts++;
      child.kill('SIGINT');
    }, 1500);
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.write('In the beginning God created the heaven and the earth.\n'); // stdin stays open
  const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
  clearTimeout(quiet);
  expect(interrupts).toBe(2);
  expect(code).toBe(130);
  expect(stderr).toMatch(/\[\d+ tokens \(abort\)/);
});
