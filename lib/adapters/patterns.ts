/**
 * Module-name patterns, matched as PEFT matches them: target_modules /
 * exclude_modules given as one string are a regex that must match the whole
 * name (re.fullmatch); rank_pattern / alpha_pattern keys match a name when
 * '(.*\.)?(key)' matches it whole (PEFT's get_pattern_key), first key first.
 *
 * The patterns usually come from adapter_config.json, often a downloaded file,
 * so they run on RE2 (the re2js port, pure JavaScript): matching takes time
 * linear in the name, whatever the pattern. A backtracking engine takes
 * exponential time on patterns like '(.*)*x', which would let a hostile file
 * hang loadAdapter. RE2 refuses the few constructs it cannot run in linear
 * time (lookaround, backreferences); such a pattern is refused with its reason.
 */
import { RE2JS } from 're2js';

import { describeValue } from '../shape';

/** Compiles `pattern` for whole-name matching; throws naming `what` if it is not a valid pattern. */
export function compilePattern(pattern: string, what: string): (name: string) => boolean {
  let regex: RE2JS;
  try {
    regex = RE2JS.compile(pattern);
  } catch (error) {
    throw new Error(
      `${what}: '${pattern}' is not a regular expression tera-peft can match in linear time (RE2 syntax: no ` +
        `lookaround or backreferences): ${(error as Error).message}`,
    );
  }
  return (name) => regex.matches(name);
}

/** PEFT's rank_pattern / alpha_pattern: a value per pattern key, in the file's order. */
export type PatternValues = Readonly<Record<string, number>>;

function keyMatcher(key: string, what: string): (name: string) => boolean {
  return compilePattern(`(?:.*\\.)?(?:${key})`, what);
}

const compiled = new WeakMap<PatternValues, [key: string, matches: (name: string) => boolean][]>();

/** Checks a pattern -> value object (each key a valid pattern, each value passing `check`); returns it frozen. */
export function checkPatternValues(
  value: unknown,
  what: string,
  check: (value: unknown, what: string) => number,
): PatternValues {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error(`${what} must be an object of pattern -> value, got ${describeValue(value)}`);
  }
  const entries = Object.entries(value).map(([key, v]): [string, number] => {
    if (key === '') throw new Error(`${what}: an empty pattern matches nothing`);
    keyMatcher(key, `${what}['${key}']`);
    return [key, check(v, `${what}['${key}']`)];
  });
  return Object.freeze(Object.fromEntries(entries));
}

/** The value of the first key of `values` that names `moduleName` (PEFT's get_pattern_key), or undefined. */
export function lookupPattern(values: PatternValues, moduleName: string): number | undefined {
  let matchers = compiled.get(values);
  if (matchers === undefined) {
    matchers = Object.keys(values).map((key) => [key, keyMatcher(key, 'pattern')]);
    compiled.set(values, matchers);
  }
  const found = matchers.find(([, matches]) => matches(moduleName));
  return found === undefined ? undefined : values[found[0]];
}
