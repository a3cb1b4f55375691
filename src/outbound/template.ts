/**
 * `{{name}}` placeholders in campaign prompts and greetings, filled per contact.
 *
 * Deliberately tiny: a placeholder is `{{`, optional spaces, a name
 * (`[A-Za-z_][A-Za-z0-9_]*`), optional spaces, `}}`. Nothing is evaluated:
 * values are inserted verbatim and never scanned again, so a value that itself
 * contains `{{x}}` stays literal text. Anything else that looks like braces
 * (`{{{x}}}`, `{{ first name }}`, a lone `{{`) is left as it is.
 */

/** What a template variable may be called (also the rule CSV headers are normalized to). */
export const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A placeholder not glued to a third brace on either side. */
const PLACEHOLDER = /(?<!\{)\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}(?!\})/g;

export type FilledTemplate = { ok: true; text: string } | { ok: false; missing: string[] };

/** The variable names `tpl` uses, each once, in order of first use. */
export function templateVariables(tpl: string): string[] {
  const names = new Set<string>();
  for (const m of tpl.matchAll(PLACEHOLDER)) names.add(m[1] as string);
  return [...names];
}

/**
 * Replaces every placeholder with its value from `vars` (own properties only;
 * an empty string is a value). If any variable has no value the result lists
 * them all, in order of first use, and no text is produced.
 */
export function fillTemplate(tpl: string, vars: Readonly<Record<string, string>>): FilledTemplate {
  const missing = templateVariables(tpl).filter((n) => !Object.hasOwn(vars, n) || typeof vars[n] !== 'string');
  if (missing.length > 0) return { ok: false, missing };
  // A replacer function: `$&`, `$1`… in values are not special.
  const text = tpl.replace(PLACEHOLDER, (_m, name: string) => vars[name] as string);
  return { ok: true, text };
}
