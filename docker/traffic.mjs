/* global process, fetch, setInterval */
// A gentle, endless mix of client traffic for the compose demo, so the dashboard has something to show:
// every route, some streams, a long prompt now and then (the `auto` route's deep tier). Node 22, no deps.
const base = process.env.GATEWAY_URL ?? 'http://gateway:8080';
const rps = Number(process.env.TRAFFIC_RPS ?? 4);
const routes = ['cheap', 'fast', 'smart', 'auto', 'auto'];
const prompts = [
  'hello',
  'Summarise the plot of Hamlet.',
  'Write a haiku about routers.',
  'Explain TCP slow start.',
];
const pick = (xs) => xs[Math.floor(Math.random() * xs.length)];

async function once() {
  const long = Math.random() < 0.05;
  const body = {
    model: pick(routes),
    stream: Math.random() < 0.5,
    messages: [{ role: 'user', content: long ? 'lorem ipsum '.repeat(2000) : pick(prompts) }],
  };
  try {
    const res = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    await res.arrayBuffer();
  } catch {
    // the gateway may still be starting
  }
}

setInterval(() => void once(), 1000 / rps);
