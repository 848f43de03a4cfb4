"""Builds the training corpus from Debian packages and splits off a held-out part.

Source: the King James Version of the Bible, as the `bible` program of Debian's bible-kjv
package prints it (text from bible-kjv-text). One verse per line, led by its reference
("Ge1:1 In the beginning ..."). The references stay in: they are a fixed, predictable pattern
(the next verse number), which is exactly the kind of token a depth router should learn to
run shallow.

Split: every 20th chapter (counting chapters in canonical order from 0) goes to heldout.txt,
the rest to train.txt, so both sides cover every book and style.

    python3 train/corpus.py OUT_DIR
"""
import json
import os
import re
import subprocess
import sys


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else 'train/data'
    os.makedirs(out, exist_ok=True)
    text = subprocess.run(['bible', '-f', 'Gen1:1-Rev22:21'], check=True, capture_output=True, text=True).stdout
    lines = [l for l in text.split('\n') if l.strip()]
    ref = re.compile(r'^([1-3]?[A-Za-z]+)(\d+):(\d+) ')
    train, held = [], []
    chapter, last = -1, None
    for l in lines:
        m = ref.match(l)
        if not m:
            raise SystemExit(f'unexpected line from bible: {l[:80]!r}')
        key = (m.group(1), m.group(2))
        if key != last:
            chapter += 1
            last = key
        (held if chapter % 20 == 0 else train).append(l)
    for name, part in (('train.txt', train), ('heldout.txt', held)):
        with open(os.path.join(out, name), 'w') as f:
            f.write('\n'.join(part) + '\n')
    manifest = {
        'source': 'King James Version (1611), via Debian packages bible-kjv 4.38 / bible-kjv-text 4.38: `bible -f Gen1:1-Rev22:21`',
        'licence': 'public domain (Debian copyright file: the copyright of the KJV text has expired)',
        'chapters': chapter + 1,
        'split': 'every 20th chapter (0, 20, 40, ...) is held out',
        'train': {'verses': len(train), 'bytes': sum(len(l) + 1 for l in train)},
        'heldout': {'verses': len(held), 'bytes': sum(len(l) + 1 for l in held)},
    }
    with open(os.path.join(out, 'corpus.json'), 'w') as f:
        json.dump(manifest, f, indent=2)
        f.write('\n')
    print(json.dumps(manifest, indent=2))


if __name__ == '__main__':
    main()
