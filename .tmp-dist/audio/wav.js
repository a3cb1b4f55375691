/**
 * Minimal RIFF/WAVE reader and writer for test fixtures, recordings and the CLI.
 *
 * Reads 16-bit PCM (any rate, any channel count, mixed down to mono) and 8-bit
 * G.711 mu-law (`WAVE_FORMAT_MULAW`, 7), including both inside
 * `WAVE_FORMAT_EXTENSIBLE`. Chunks are walked properly (LIST, fact, odd-size
 * padding…), so headers longer than 44 bytes are fine.
 */
import waveResampler from 'wave-resampler';
import { mulawDecode, mulawEncode } from './mulaw.js';
const WAVE_FORMAT_PCM = 1;
const WAVE_FORMAT_MULAW = 7;
const WAVE_FORMAT_EXTENSIBLE = 0xfffe;
function fourcc(buf, at) {
    return String.fromCharCode(buf[at] ?? 0, buf[at + 1] ?? 0, buf[at + 2] ?? 0, buf[at + 3] ?? 0);
}
function isRiffWave(buf) {
    return buf.length >= 12 && fourcc(buf, 0) === 'RIFF' && fourcc(buf, 8) === 'WAVE';
}
/** Yields the top-level chunks of a RIFF/WAVE buffer (caller checked the magic). */
function* riffChunks(buf) {
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let at = 12;
    while (at + 8 <= buf.length) {
        const id = fourcc(buf, at);
        const size = view.getUint32(at + 4, true);
        const start = at + 8;
        // Streaming writers leave the size at 0 or 0xFFFFFFFF: take what is there.
        const end = Math.min(buf.length, start + size);
        yield { id, body: buf.subarray(start, end) };
        at = start + size + (size & 1);
    }
}
function parseFmt(body) {
    if (body.length < 16)
        throw new Error('WAV: fmt chunk is too short');
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    let format = view.getUint16(0, true);
    if (format === WAVE_FORMAT_EXTENSIBLE) {
        // cbSize(2) validBits(2) channelMask(4) then the sub-format GUID whose first 2 bytes are the format tag.
        if (body.length < 26)
            throw new Error('WAV: WAVE_FORMAT_EXTENSIBLE fmt chunk is too short');
        format = view.getUint16(24, true);
    }
    return {
        format,
        channels: view.getUint16(2, true),
        sampleRate: view.getUint32(4, true),
        blockAlign: view.getUint16(12, true),
        bitsPerSample: view.getUint16(14, true),
    };
}
/**
 * Decodes a WAV file to mono 16-bit samples.
 * @throws Error when the bytes are not a WAV, or the encoding is not 16-bit PCM or 8-bit mu-law.
 */
export function readWav(buf) {
    if (!isRiffWave(buf))
        throw new Error('WAV: missing RIFF/WAVE header');
    let fmt;
    let data;
    for (const chunk of riffChunks(buf)) {
        if (chunk.id === 'fmt ' && fmt === undefined)
            fmt = parseFmt(chunk.body);
        else if (chunk.id === 'data' && data === undefined)
            data = chunk.body;
    }
    if (fmt === undefined)
        throw new Error('WAV: no fmt chunk');
    if (data === undefined)
        throw new Error('WAV: no data chunk');
    const { format, channels, sampleRate, bitsPerSample } = fmt;
    if (channels < 1)
        throw new Error('WAV: channel count is 0');
    if (sampleRate < 1)
        throw new Error('WAV: sample rate is 0');
    let interleaved;
    if (format === WAVE_FORMAT_PCM && bitsPerSample === 16) {
        const count = data.length >>> 1;
        interleaved = new Int16Array(count);
        const view = new DataView(data.buffer, data.byteOffset, count * 2);
        for (let i = 0; i < count; i++)
            interleaved[i] = view.getInt16(i * 2, true);
    }
    else if (format === WAVE_FORMAT_MULAW && bitsPerSample === 8) {
        interleaved = mulawDecode(data);
    }
    else {
        throw new Error(`WAV: unsupported encoding (format tag ${format}, ${bitsPerSample} bits); only 16-bit PCM and 8-bit mu-law are supported`);
    }
    return { sampleRate, samples: channels === 1 ? interleaved : mixDown(interleaved, channels) };
}
function mixDown(interleaved, channels) {
    const frames = Math.floor(interleaved.length / channels);
    const out = new Int16Array(frames);
    for (let f = 0; f < frames; f++) {
        let sum = 0;
        const base = f * channels;
        for (let c = 0; c < channels; c++)
            sum += interleaved[base + c] ?? 0;
        out[f] = Math.round(sum / channels);
    }
    return out;
}
/** Encodes mono 16-bit samples as a canonical 44-byte-header PCM WAV file. */
export function writeWavPcm16(samples, sampleRate) {
    const dataBytes = samples.length * 2;
    const out = Buffer.alloc(44 + dataBytes);
    out.write('RIFF', 0, 'ascii');
    out.writeUInt32LE(36 + dataBytes, 4);
    out.write('WAVE', 8, 'ascii');
    out.write('fmt ', 12, 'ascii');
    out.writeUInt32LE(16, 16);
    out.writeUInt16LE(WAVE_FORMAT_PCM, 20);
    out.writeUInt16LE(1, 22); // mono
    out.writeUInt32LE(sampleRate, 24);
    out.writeUInt32LE(sampleRate * 2, 28); // byte rate
    out.writeUInt16LE(2, 32); // block align
    out.writeUInt16LE(16, 34); // bits per sample
    out.write('data', 36, 'ascii');
    out.writeUInt32LE(dataBytes, 40);
    for (let i = 0; i < samples.length; i++)
        out.writeInt16LE(samples[i] ?? 0, 44 + i * 2);
    return out;
}
/** Wraps raw 8 kHz mu-law audio as a playable 8 kHz mono 16-bit PCM WAV (decoded). */
export function writeWavMulaw(ulaw) {
    return writeWavPcm16(mulawDecode(ulaw), 8000);
}
/** Resamples mono 16-bit samples to `toRate` (no-op copy when the rates match). */
export function resamplePcm16(samples, fromRate, toRate) {
    if (fromRate === toRate)
        return samples.slice();
    const resampled = waveResampler.resample(samples, fromRate, toRate);
    const out = new Int16Array(resampled.length);
    for (let i = 0; i < resampled.length; i++) {
        const v = Math.round(resampled[i] ?? 0);
        out[i] = v > 32767 ? 32767 : v < -32768 ? -32768 : v;
    }
    return out;
}
/** Converts any WAV `readWav` accepts to raw 8 kHz mono mu-law (resampling when needed). */
export function toMulaw8k(wav) {
    const { sampleRate, samples } = readWav(wav);
    return mulawEncode(resamplePcm16(samples, sampleRate, 8000));
}
/**
 * If `bytes` start with a RIFF/WAVE header, returns the payload of its `data`
 * chunk (a view, possibly empty when only the header arrived); otherwise
 * `undefined`. Meant for agents that might wrap mu-law audio in a WAV header.
 */
export function stripWavHeader(bytes) {
    if (!isRiffWave(bytes))
        return undefined;
    for (const chunk of riffChunks(bytes)) {
        if (chunk.id === 'data')
            return chunk.body;
    }
    return bytes.subarray(bytes.length);
}
//# sourceMappingURL=wav.js.map