import { WebSocket } from 'ws';
import { readFileSync } from 'node:fs';
const url = process.argv[2];
const ws = new WebSocket(url + '/v1/talk/x');
const frames = [];
ws.on('open', () => ws.send(JSON.stringify({ type: 'setup', inputEncoding: 'mulaw', inputSampleRate: 8000, outputFormat: 'mulaw', outputSampleRate: 8000 })));
ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
setTimeout(() => {
  const audio = Buffer.concat(frames.filter((f) => f.type === 'audioStream').map((f) => Buffer.from(f.data, 'base64')));
  const asset = readFileSync('assets/greeting.ulaw');
  console.log(frames.slice(0, 3).map((f) => f.type).join(','), 'chunks', frames.filter((f) => f.type === 'audioStream').length, 'matches asset', audio.equals(asset.subarray(0, audio.length)));
  ws.close(); 
}, 330);
