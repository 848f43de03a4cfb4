/**
 * A byte-level BPE tokenizer for test models (GPT-2 / Llama-3 style): the 256 GPT-2 byte symbols,
 * then merges learned here from a built-in English sample (most frequent pair first, ties by
 * string order), then five special tokens at the top ids. Written as tokenizer.json in the layout
 * of Hugging Face tokenizers.
 */
import { ordered, type JsonLike } from './hfJson';

/**
 * Built-in training text for the BPE merges. Plain English prose with some digits and
 * punctuation, written for this package.
 */
const SAMPLE_TEXT = `The small model reads a line of text, one token at a time, and guesses what comes next.
It is not a clever model. Its weights were drawn at random, so the words it writes will make
little sense, but the numbers that flow through it are real, and every layer does the same work
that a large model does. That is the point: a test can check the arithmetic of the whole network
in a fraction of a second.

When the weather is fine, the children walk to the river and throw stones into the water. The
stones skip three or four times before they sink. Their mother watches from the bridge and counts
out loud: one, two, three, four, five. In the evening they go home, eat bread and soup, and talk
about the day. The old dog sleeps by the door and does not care about stones at all.

A tokenizer turns text into numbers. This one starts from the 256 possible bytes, so any string
can be written down, even one in another language or with symbols the training text never saw.
Then it learns merges: the most common pair of neighbouring pieces becomes a new piece, again and
again, until the vocabulary is as large as we want. Common words such as "the", "and", "of" and
"to" end up as single tokens, while rare words are spelled out in smaller parts.

There are 12 months in a year, 7 days in a week and 24 hours in a day. In 2024 the town had 3,500
people; by 2030 it may have 4,000 or more. The train leaves at 9:15 and arrives at 11:40, which
is two hours and twenty-five minutes later. Tickets cost $18.50 for adults and $9.25 for children.

Questions are welcome! What is the name of the tallest mountain? Where does the river begin? Why
is the sky blue in the day and dark at night? Who wrote the first book, and what was it about?
How many stars can you count before you fall asleep? Nobody knows all the answers, and that is fine.

She said, "I'll be there at noon." He replied, "We've already left, so we'll meet you at the
station." They're late again; it's the third time this month. You'd think they'd learn, but they
don't, and I'm sure they won't. Still, we like them, and they like us, and that's what matters.

Good software is tested often and carefully. Each function should do one thing and do it well;
each test should check one behaviour and explain what went wrong when it fails. Write the simple
version first, measure it, and only then make it faster. Keep the data small, the names clear and
the interfaces honest. When something breaks, read the error message before you change the code.

In the garden there are roses, tulips, daisies and a long row of green beans. The farmer plants
the seeds in spring, waters them in summer and picks the beans in the first weeks of autumn. The
birds eat some of the seeds, the rain washes others away, but most of them grow into strong plants.
`;

let cachedBytesToUnicode: string[] | null = null;

/**
 * GPT-2's reversible byte -> printable character table (bytes that are already printable map to
 * themselves; the others are shifted to U+0100 and up). Returned as an array indexed by byte.
 */
export function bytesToUnicode(): string[] {
  if (cachedBytesToUnicode) return cachedBytesToUnicode;
  const table: string[] = new Array<string>(256);
  const printable = (b: number): boolean =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (printable(b)) table[b] = String.fromCharCode(b);
    else table[b] = String.fromCharCode(256 + n++);
  }
  cachedBytesToUnicode = table;
  return table;
}

/** The 256 byte tokens in GPT-2 vocabulary order: printable bytes first, then the rest. */
function byteTokensInVocabOrder(): string[] {
  const table = bytesToUnicode();
  const order: number[] = [];
  for (let b = 0; b < 256; b++) if (table[b]!.charCodeAt(0) < 256) order.push(b);
  for (let b = 0; b < 256; b++) if (table[b]!.charCodeAt(0) >= 256) order.push(b);
  return order.map((b) => table[b]!);
}

/** GPT-2 pre-tokenization regex (what the ByteLevel pre-tokenizer applies with use_regex). */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

export interface BpeModel {
  vocab: string[]; // index = id
  merges: [string, string][];
}

const bpeCache = new Map<number, BpeModel>();

/**
 * Learns byte-level BPE merges on SAMPLE_TEXT until the vocabulary has `target` entries (or no
 * pair occurs any more). At each step the most frequent adjacent pair is merged; ties go to the
 * pair whose "a b" string sorts first, which makes training deterministic.
 */
export function trainBpe(target: number): BpeModel {
  const cached = bpeCache.get(target);
  if (cached) return cached;
  const table = bytesToUnicode();
  const enc = new TextEncoder();
  const wordCounts = new Map<string, number>();
  for (const piece of SAMPLE_TEXT.match(GPT2_SPLIT) ?? []) {
    const mapped = Array.from(enc.encode(piece), (b) => table[b]!).join('');
    wordCounts.set(mapped, (wordCounts.get(mapped) ?? 0) + 1);
  }
  const words: { syms: string[]; count: number }[] = [];
  for (const w of [...wordCounts.keys()].sort()) words.push({ syms: Array.from(w), count: wordCounts.get(w)! });

  const vocab = byteTokensInVocabOrder();
  const known = new Set(vocab);
  const merges: [string, string][] = [];
  while (vocab.length < target) {
    const pairCounts = new Map<string, number>();
    for (const w of words) {
      for (let i = 0; i + 1 < w.syms.length; i++) {
        const key = w.syms[i]! + ' ' + w.syms[i + 1]!;
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + w.count);
      }
    }
    let best: string | null = null;
    let bestCount = 0;
    for (const [key, c] of pairCounts) {
      if (c > bestCount || (c === bestCount && best !== null && key < best)) {
        best = key;
        bestCount = c;
      }
    }
    if (best === null) break; // every word is a single token
    const sp = best.indexOf(' ');
    const a = best.slice(0, sp);
    const b = best.slice(sp + 1);
    merges.push([a, b]);
    const merged = a + b;
    if (!known.has(merged)) {
      known.add(merged);
      vocab.push(merged);
    }
    for (const w of words) {
      const out: string[] = [];
      for (let i = 0; i < w.syms.length; i++) {
        if (i + 1 < w.syms.length && w.syms[i] === a && w.syms[i + 1] === b) {
          out.push(merged);
          i++;
        } else {
          out.push(w.syms[i]!);
        }
      }
      w.syms = out;
    }
  }
  const model = { vocab, merges };
  bpeCache.set(target, model);
  return model;
}

export const SPECIAL_TOKENS = [
  '<|begin_of_text|>',
  '<|end_of_text|>',
  '<|start_header_id|>',
  '<|end_header_id|>',
  '<|eot_id|>',
] as const;

/** Llama-3-style chat template (Jinja). */
export const TINY_CHAT_TEMPLATE =
  '{{- bos_token }}' +
  '{%- for message in messages %}' +
  "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}" +
  '{%- endfor %}' +
  '{%- if add_generation_prompt %}' +
  "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}" +
  '{%- endif %}';

export function buildTokenizerJson(bpe: BpeModel, specialIds: number[], addBos: boolean): JsonLike {
  const addedTokens: JsonLike[] = SPECIAL_TOKENS.map((content, i) =>
    ordered([
      ['id', specialIds[i]!],
      ['content', content],
      ['single_word', false],
      ['lstrip', false],
      ['rstrip', false],
      ['normalized', false],
      ['special', true],
    ]),
  );
  const bosTok = SPECIAL_TOKENS[0];
  const bosId = specialIds[0]!;
  const special = (typeId: number): JsonLike =>
    ordered([
      [
        'SpecialToken',
        ordered([
          ['id', bosTok],
          ['type_id', typeId],
        ]),
      ],
    ]);
  const sequence = (id: string, typeId: number): JsonLike =>
    ordered([
      [
        'Sequence',
        ordered([
          ['id', id],
          ['type_id', typeId],
        ]),
      ],
    ]);
  const postProcessor: JsonLike = addBos
    ? ordered([
        ['type', 'TemplateProcessing'],
        ['single', [special(0), sequence('A', 0)]],
        ['pair', [special(0), sequence('A', 0), special(1), sequence('B', 1)]],
        [
          'special_tokens',
          ordered([
            [
              bosTok,
              ordered([
                ['id', bosTok],
                ['ids', [bosId]],
                ['tokens', [bosTok]],
              ]),
            ],
          ]),
        ],
      ])
    : ordered([
        ['type', 'ByteLevel'],
        ['add_prefix_space', true],
        ['trim_offsets', false],
        ['use_regex', true],
      ]);
  const vocab = new Map<string, JsonLike>();
  bpe.vocab.forEach((tok, id) => vocab.set(tok, id));
  return ordered([
    ['version', '1.0'],
    ['truncation', null],
    ['padding', null],
    ['added_tokens', addedTokens],
    ['normalizer', null],
    [
      'pre_tokenizer',
      ordered([
        ['type', 'ByteLevel'],
        ['add_prefix_space', false],
        ['trim_offsets', true],
        ['use_regex', true],
      ]),
    ],
    ['post_processor', postProcessor],
    [
      'decoder',
      ordered([
        ['type', 'ByteLevel'],
        ['add_prefix_space', true],
        ['trim_offsets', true],
        ['use_regex', true],
      ]),
    ],
    [
      'model',
      ordered([
        ['type', 'BPE'],
        ['dropout', null],
        ['unk_token', null],
        ['continuing_subword_prefix', null],
        ['end_of_word_suffix', null],
        ['fuse_unk', false],
        ['byte_fallback', false],
        ['ignore_merges', false],
        ['vocab', vocab],
        ['merges', bpe.merges.map(([a, b]) => `${a} ${b}`)],
      ]),
    ],
  ]);
}
