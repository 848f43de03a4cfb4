/**
 * Reading a model directory's files without ever blocking on them: only regular files are read
 * (a FIFO, a socket, a device such as /dev/zero or a directory is refused at once, checked with
 * stat() before anything is opened and again on the open descriptor), the descriptor is opened
 * with O_NONBLOCK (so a FIFO swapped in after the check cannot hold the event loop), and JSON
 * files are read up to a size cap, whatever size the file system reports.
 */
import * as fs from 'node:fs';
import { ModelFileError } from './errors';

const MiB = 2 ** 20;

/**
 * Largest JSON file read from a model directory. tokenizer.json of real models reaches about
 * 20 MB (large vocabularies with their merges); the configs are kilobytes, the shard index of
 * the largest checkpoints a few megabytes.
 */
export const JSON_SIZE_LIMITS = { 'tokenizer.json': 64 * MiB, other: 16 * MiB } as const;

/** The cap for a JSON file of a model directory, by its role (`what`, e.g. 'config.json'). */
export function jsonSizeLimit(what: string): number {
  return what === 'tokenizer.json' ? JSON_SIZE_LIMITS['tokenizer.json'] : JSON_SIZE_LIMITS.other;
}

function kind(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  return 'not a regular file';
}

/**
 * Stats a model file (following symlinks) and refuses anything but a regular file with
 * ModelFileError naming it. `what` names its role in messages.
 */
export function statRegularFile(file: string, what: string): fs.Stats {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new ModelFileError(
      err.code === 'ENOENT' ? `${what} is missing` : `cannot read ${what}: ${err.message}`,
      file,
      e,
    );
  }
  if (!st.isFile()) throw new ModelFileError(`${what} is not a regular file (it is ${kind(st)})`, file);
  return st;
}

/** Reads a regular file of at most `maxBytes` bytes as UTF-8 text; typed errors name the file. */
export function readRegularFile(file: string, what: string, maxBytes: number): string {
  const tooLarge = () =>
    new ModelFileError(`${what} is larger than the ${Math.round(maxBytes / MiB)} MiB depthgate reads for it`, file);
  if (statRegularFile(file, what).size > maxBytes) throw tooLarge();
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    throw new ModelFileError(`cannot read ${what}: ${(e as Error).message}`, file, e);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new ModelFileError(`${what} is not a regular file (it is ${kind(st)})`, file);
    // Read to the end of the file, not to the size stat reports (files in /proc report 0),
    // and stop one byte past the cap.
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.min(Math.max(st.size - total, 0) + 65536, maxBytes + 1 - total));
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      chunks.push(n === buf.length ? buf : buf.subarray(0, n));
      total += n;
      if (total > maxBytes) throw tooLarge();
    }
    return Buffer.concat(chunks, total).toString('utf8');
  } catch (e) {
    if (e instanceof ModelFileError) throw e;
    throw new ModelFileError(`cannot read ${what}: ${(e as Error).message}`, file, e);
  } finally {
    fs.closeSync(fd);
  }
}
