// A load generator in its own process, for requests wrk cannot measure: wrk
// waits for a body after a HEAD response that carries Content-Length, so it
// stalls on every manifest HEAD. Usage:
//   node dist/bench/lib/load-generator.js '{"url":…,"method":…,"headers":{…},"connections":64,"seconds":15}'
// prints {"rate":…,"p50":…,"p99":…,"errors":…} (requests/s, latency in ms).
import http from 'node:http';
import { performance } from 'node:perf_hooks';

interface LoadOptions {
  url: string;
  method: string;
  headers: Record<string, string>;
  connections: number;
  seconds: number;
}

const options = JSON.parse(process.argv[2] ?? '{}') as LoadOptions;
const agent = new http.Agent({ keepAlive: true, maxSockets: options.connections });
const latencies: number[] = [];
let errors = 0;

function send(): Promise<void> {
  return new Promise((resolve) => {
    const sent = performance.now();
    const request = http.request(
      options.url,
      { method: options.method, headers: options.headers, agent },
      (response) => {
        response.resume();
        response.on('end', () => {
          if (response.statusCode === 200) latencies.push(performance.now() - sent);
          else errors += 1;
          resolve();
        });
      },
    );
    request.on('error', () => {
      errors += 1;
      resolve();
    });
    request.end();
  });
}

const start = performance.now();
const deadline = start + options.seconds * 1000;
const connection = async () => {
  while (performance.now() < deadline) await send();
};
await Promise.all(Array.from({ length: options.connections }, connection));
const seconds = (performance.now() - start) / 1000;
agent.destroy();

latencies.sort((a, b) => a - b);
const at = (fraction: number) =>
  latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * fraction))] ?? NaN;
process.stdout.write(
  `${JSON.stringify({ rate: latencies.length / seconds, p50: at(0.5), p99: at(0.99), errors })}\n`,
);
