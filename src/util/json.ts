/**
 * `JSON.parse` for text that must hold one JSON object: returns the object,
 * or why it is not one. Never throws. The object's fields are still unchecked.
 */
export function parseJsonObject(text: string): Record<string, unknown> | 'non_json' | 'not_object' {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return 'non_json';
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return 'not_object';
  return raw as Record<string, unknown>;
}
