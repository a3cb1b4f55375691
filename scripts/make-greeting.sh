#!/usr/bin/env sh
# Regenerates assets/greeting.ulaw: the local agent's echo-test greeting as raw
# (headerless) G.711 mu-law, 8 kHz, mono. Needs espeak-ng and sox.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
text="Hello, this is the Playline echo test. Say something, and I will play it back to you."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
espeak-ng -v en-us -s 160 -w "$tmp/greeting.wav" "$text"
# Resample to 8 kHz mono, normalise to -3 dBFS peak, pad 200 ms of silence at the end.
sox "$tmp/greeting.wav" -r 8000 -c 1 -e mu-law -b 8 -t raw "$root/assets/greeting.ulaw" norm -3 pad 0 0.2
echo "wrote $root/assets/greeting.ulaw ($(wc -c < "$root/assets/greeting.ulaw") bytes)"
