"""Trains a byte-level BPE tokenizer (GPT-2 style) and writes a Hugging Face tokenizer.json.

    python3 train/bpe.py TEXT_FILE OUT_DIR --vocab 4096

Pre-tokenisation is GPT-2's regular expression, which the ByteLevel pre-tokenizer in
tokenizer.json applies at run time; the Python form below is exact for ASCII text (the corpus
is checked to be ASCII). Merges are learned from word counts, most frequent pair first, ties
broken by the pair's strings, with incremental pair counts so a few thousand merges take
seconds. One special token, <|endoftext|>, takes the last id and serves as BOS and EOS.
"""
import argparse
import collections
import json
import os
import re

PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")
EOT = '<|endoftext|>'


def byte_symbols():
    """GPT-2's reversible byte -> printable character map."""
    keep = list(range(ord('!'), ord('~') + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def train(text, vocab_size):
    if not text.isascii():
        raise SystemExit('the corpus must be ASCII (the Python pre-tokenizer is exact for ASCII only)')
    sym = byte_symbols()
    counts = collections.Counter(PRETOKENIZE.findall(text))
    words = [[sym[b] for b in w.encode()] for w in counts]
    freq = [counts[w] for w in counts]
    vocab = sorted(sym.values())
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pairs[(a, b)] += freq[i]
            where[(a, b)].add(i)
    merges = []
    target = vocab_size - 1  # the last id is <|endoftext|>
    while len(vocab) < target and pairs:
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        if pairs[best] < 2:
            break
        merges.append(best)
        new = best[0] + best[1]
        vocab.append(new)
        for i in list(where.pop(best, ())):
            w = words[i]
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] -= freq[i]
                if pairs[(a, b)] <= 0:
                    del pairs[(a, b)]
                where[(a, b)].discard(i)
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == best[0] and w[j + 1] == best[1]:
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for a, b in zip(out, out[1:]):
                pairs[(a, b)] += freq[i]
                where[(a, b)].add(i)
        pairs.pop(best, None)
    return vocab, merges


def tokenizer_json(vocab, merges):
    eot_id = len(vocab)
    byte_level = {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True}
    return {
        'version': '1.0',
        'truncation': None,
        'padding': None,
        'added_tokens': [{'id': eot_id, 'content': EOT, 'single_word': False, 'lstrip': False, 'rstrip': False,
                          'normalized': False, 'special': True}],
        'normalizer': None,
        'pre_tokenizer': byte_level,
        'post_processor': {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': False, 'use_regex': True},
        'decoder': {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': True, 'use_regex': True},
        'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                  'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': False,
                  'vocab': {t: i for i, t in enumerate(vocab)}, 'merges': [f'{a} {b}' for a, b in merges]},
    }


CHAT_TEMPLATE = "{%- for message in messages %}{{ message['content'] | trim }}{{ '\\n' }}{%- endfor %}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('text')
    ap.add_argument('out')
    ap.add_argument('--vocab', type=int, default=4096)
    ap.add_argument('--max-length', type=int, default=1024)
    a = ap.parse_args()
    with open(a.text) as f:
        text = f.read()
    vocab, merges = train(text, a.vocab)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, 'tokenizer.json'), 'w') as f:
        json.dump(tokenizer_json(vocab, merges), f, ensure_ascii=False)
    eot_id = len(vocab)
    with open(os.path.join(a.out, 'tokenizer_config.json'), 'w') as f:
        json.dump({
            'add_bos_token': False, 'add_eos_token': False,
            'added_tokens_decoder': {str(eot_id): {'content': EOT, 'lstrip': False, 'normalized': False, 'rstrip': False,
                                                   'single_word': False, 'special': True}},
            'bos_token': EOT, 'eos_token': EOT, 'clean_up_tokenization_spaces': False,
            # The model knows one format, a verse per line: each message is a line, the reply the next.
            'chat_template': CHAT_TEMPLATE,
            'model_input_names': ['input_ids', 'attention_mask'], 'model_max_length': a.max_length,
            'tokenizer_class': 'PreTrainedTokenizerFast',
        }, f, indent=2, sort_keys=True)
        f.write('\n')
    print(f'{len(merges)} merges, vocabulary {eot_id + 1} (<|endoftext|> = {eot_id})')


if __name__ == '__main__':
    main()
