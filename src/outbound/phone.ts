/**
 * Phone numbers of the outbound service: whatever people type or export
 * (`(415) 555-0100`, `+44 20 7946 0958`, `tel:+1…`) in, E.164 out.
 *
 * Validation is libphonenumber-js with its full ("max") metadata, so a number
 * must be valid for its country's numbering plan, not merely the right length:
 * `+1 555 123 0001` (no such US area code) is refused.
 */
import { isSupportedCountry, parsePhoneNumberFromString, validatePhoneNumberLength, type CountryCode } from 'libphonenumber-js/max';
import { z } from 'zod';

export type { CountryCode };

export type NormalizedPhone = { ok: true; e164: string } | { ok: false; error: string };

/** `+`, a first digit 1-9, at most 15 digits in all. */
export const E164_SHAPE = /^\+[1-9]\d{1,14}$/;
const LETTER = /\p{L}/u;

/** Whether `s` is an ISO 3166-1 alpha-2 code libphonenumber-js knows (`US`, `GB`…), e.g. for DEFAULT_COUNTRY. */
export function isCountryCode(s: string): s is CountryCode {
  return /^[A-Z]{2}$/.test(s) && isSupportedCountry(s);
}

/**
 * Parses `input` as a phone number and returns it in E.164 (`+14155550100`).
 *
 * A number without a `+` country code is read as a national number of
 * `defaultCountry`; without one it is refused. Only numbers that are valid in
 * their country are accepted; letters (`1-800-FLOWERS`) and extensions are
 * refused, since neither survives the trip to E.164. The error texts are meant
 * for people (an API response, a CSV import report).
 */
export function normalizePhone(input: string, defaultCountry?: CountryCode): NormalizedPhone {
  if (defaultCountry !== undefined && !isCountryCode(defaultCountry)) {
    return { ok: false, error: `unknown default country "${String(defaultCountry)}"` };
  }
  const text = input.trim().replace(/^tel:/i, '');
  if (text === '') return { ok: false, error: 'empty phone number' };
  if (text.length > 64) return { ok: false, error: 'not a valid phone number (too long)' };
  const parsed = parsePhoneNumberFromString(text, defaultCountry);
  if (parsed?.ext !== undefined) return { ok: false, error: 'phone extensions are not supported' };
  if (LETTER.test(text)) return { ok: false, error: 'not a valid phone number (contains letters)' };
  if (!/\d/.test(text)) return { ok: false, error: 'not a valid phone number' };
  const international = text.startsWith('+');
  if (!international && defaultCountry === undefined) {
    return { ok: false, error: 'needs a country code (+…) or DEFAULT_COUNTRY' };
  }
  if (parsed?.isValid() === true) return { ok: true, e164: parsed.number };
  switch (validatePhoneNumberLength(text, defaultCountry)) {
    case 'TOO_SHORT':
      return { ok: false, error: 'not a valid phone number (too short)' };
    case 'TOO_LONG':
      return { ok: false, error: 'not a valid phone number (too long)' };
    case 'INVALID_COUNTRY':
      return { ok: false, error: 'not a valid phone number (unknown country code)' };
    default:
      return { ok: false, error: 'not a valid phone number' };
  }
}

/**
 * Whether `s` is already a valid number written exactly in E.164 (what
 * {@link normalizePhone} returns), e.g. for values read back from storage.
 */
export function isE164(s: string): boolean {
  if (!E164_SHAPE.test(s)) return false;
  const r = normalizePhone(s);
  return r.ok && r.e164 === s;
}

/**
 * zod schema for phone numbers in API bodies: any international notation in,
 * E.164 out. There is no default country, so a number must carry its `+` code.
 */
export const e164Schema = z
  .string()
  .max(64)
  .transform((v, ctx) => {
    const r = normalizePhone(v);
    if (!r.ok) {
      ctx.addIssue({ code: 'custom', message: r.error });
      return z.NEVER;
    }
    return r.e164;
  });
