#!/usr/bin/env node
// Checks that every relative link in README.md and docs/ resolves: the file (or
// folder) exists inside the repository, and a #fragment names a heading of the
// target page, with GitHub's anchor rules. Web links are not fetched. Part of
// `npm run lint`, so a moved file or a renamed heading fails CI instead of
// leaving a dead link behind. Exits 1 listing every broken link.
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(import.meta.dirname, '..');

function markdownFiles() {
  const files = [path.join(root, 'README.md')];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.name.endsWith('.md')) files.push(full);
    }
  };
  walk(path.join(root, 'docs'));
  return files;
}

/** The lines of a Markdown file outside fenced code blocks, with their numbers; inline code removed. */
function proseLines(text) {
  const lines = [];
  let fence = null;
  text.split('\n').forEach((line, i) => {
    const marker = /^\s*(`{3,}|~{3,})/.exec(line);
    if (marker) {
      if (fence === null) fence = marker[1][0];
      else if (marker[1][0] === fence) fence = null;
      return;
    }
    if (fence === null) lines.push({ number: i + 1, text: line.replace(/`+[^`]*`+/g, '') });
  });
  return lines;
}

/** GitHub's anchor of a heading: its text lowercased, punctuation dropped, spaces as hyphens. */
function slug(heading) {
  const text = heading
    .replace(/`/g, '')
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1')
    .replace(/\*/g, '')
    .trim()
    .toLowerCase();
  return text.replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '').replace(/ /g, '-');
}

const anchorCache = new Map();

/** Every anchor a page offers: its headings' slugs (repeats get -1, -2, ...) and explicit ids. */
function anchorsOf(file) {
  if (anchorCache.has(file)) return anchorCache.get(file);
  const anchors = new Set();
  const seen = new Map();
  let fence = null;
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const marker = /^\s*(`{3,}|~{3,})/.exec(line);
    if (marker) {
      if (fence === null) fence = marker[1][0];
      else if (marker[1][0] === fence) fence = null;
      continue;
    }
    if (fence !== null) continue;
    const heading = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      const base = slug(heading[1]);
      const count = seen.get(base) ?? 0;
      seen.set(base, count + 1);
      anchors.add(count === 0 ? base : `${base}-${count}`);
    }
    for (const m of line.matchAll(/\s(?:id|name)="([^"]+)"/g)) anchors.add(m[1]);
  }
  anchorCache.set(file, anchors);
  return anchors;
}

/** Link targets on a line: inline links and images, reference definitions, HTML href / src. */
function targetsOf(line) {
  const targets = [];
  for (const m of line.matchAll(/!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+"[^"]*")?\s*\)/g)) targets.push(m[1]);
  const definition = /^\s{0,3}\[[^\]]+\]:\s*(\S+)/.exec(line);
  if (definition) targets.push(definition[1]);
  for (const m of line.matchAll(/\s(?:href|src)="([^"]*)"/g)) targets.push(m[1]);
  return targets.map((t) => t.replace(/^<(.*)>$/, '$1'));
}

/** Why `target`, linked from `file`, does not resolve; null when it does. */
function problemOf(file, target) {
  if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith('//')) return null;
  const hash = target.indexOf('#');
  const pathPart = decodeURIComponent(hash < 0 ? target : target.slice(0, hash));
  const fragment = hash < 0 ? null : decodeURIComponent(target.slice(hash + 1));
  const resolved = pathPart === '' ? file : path.resolve(path.dirname(file), pathPart);
  const relative = path.relative(root, resolved);
  if (relative.startsWith('..') || path.isAbsolute(relative)) return 'points outside the repository';
  if (!fs.existsSync(resolved)) return `${relative} does not exist`;
  if (fragment !== null && resolved.endsWith('.md') && !anchorsOf(resolved).has(fragment)) {
    return `${relative} has no heading with the anchor #${fragment}`;
  }
  return null;
}

const broken = [];
let checked = 0;
for (const file of markdownFiles()) {
  for (const { number, text } of proseLines(fs.readFileSync(file, 'utf8'))) {
    for (const target of targetsOf(text)) {
      checked++;
      const problem = problemOf(file, target);
      if (problem !== null) broken.push(`${path.relative(root, file)}:${number}: (${target}) ${problem}`);
    }
  }
}
if (broken.length > 0) {
  console.error(`check-links: ${broken.length} broken relative link(s):\n  ${broken.join('\n  ')}`);
  process.exit(1);
}
console.log(`check-links: ${checked} links in README.md and docs/ resolve`);
