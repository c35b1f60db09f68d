#!/usr/bin/env node
// badserver.js — a loopback model server that misbehaves on command, for the
// worker tests. Listens on 127.0.0.1:0 and prints "PORT <n>" on stdout.
//
// Routes by path: /v1/chat/completions, /v1/completions (openai),
// /completion (llamacpp), /generate_stream and /generate (tgi),
// /v1/messages (anthropic). Commands anywhere in the prompt:
//   [[srv:golden=FILE]]        stream tests/workers/golden/FILE
//   [[srv:big=N]]              a non-streamed answer of N bytes of text
//   [[srv:json=FILE]]          answer a non-streamed request with golden/FILE as its body
//   [[srv:chunk=N]]            write the stream N bytes at a time (default 3)
//   [[srv:status=S]]           answer HTTP S with an error JSON body
//   [[srv:flaky=N:S:KEY]]      the first N requests with KEY get HTTP S
//                              (429/503 with Retry-After: 0), then success
//   [[srv:stall]]              headers, then nothing
//   [[srv:stall_after=N]]      N events, then nothing
//   [[srv:reset_after=N]]      N events, then a TCP reset
//   [[srv:garbage]]            an event that is not JSON
//   [[srv:huge]]               one 5 MiB line
//   [[srv:slow_headers=MS]]    wait MS before the status line
//   [[srv:end_delay=MS]]       end a stream (chunked terminator) MS after its
//                              last event
//   [[srv:key=K]]              count the request under K (on arrival)
//   [[srv:hold=K]]             hold the request (before any other command acts)
//                              until GET /release?key=K; later ones pass
// Without commands: an answer of 5 tokens "tok0".." tok4" in the path's format.
// GET /count?key=K: requests seen with KEY (flaky or key); GET /held?key=K:
// requests held now; GET /release?key=K: let them go; GET /conns:
// connections that carried a POST (a keep-alive client reuses one); GET
// /drop: close every idle connection that carried a POST (as a keep-alive
// timeout would); GET /last: the last request.
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');

const golden = path.join(__dirname, 'golden');
const counts = {};
const held = {};      // key -> callbacks of the requests held under it
const released = {};  // key -> true once /release was asked
let last = null;
let postConns = 0;
const postSockets = new Set();

function cmd(prompt, key) {
	const m = prompt.match(new RegExp('\\[\\[srv:' + key + '(?:=([^\\]]*))?\\]\\]'));
	return m ? (m[1] === undefined ? '' : m[1]) : null;
}

function tokens(proto, n, chat) {
	const ev = [];
	for (let i = 0; i < n; i++) {
		const t = (i ? ' ' : '') + 'tok' + i;
		if (proto === 'openai')
			ev.push('data: ' + JSON.stringify({ choices: [chat ? { index: 0, delta: { content: t }, finish_reason: null }
				: { index: 0, text: t, finish_reason: null }] }) + '\n\n');
		else if (proto === 'llamacpp')
			ev.push('data: ' + JSON.stringify({ content: t, stop: false }) + '\n\n');
		else if (proto === 'tgi')
			ev.push('data:' + JSON.stringify({ token: { id: i, text: t, special: false }, generated_text: null, details: null }) + '\n\n');
		else
			ev.push('event: content_block_delta\ndata: ' + JSON.stringify({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: t } }) + '\n\n');
	}
	return ev;
}

function ending(proto, n) {
	if (proto === 'openai')
		return ['data: ' + JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }) + '\n\n', 'data: [DONE]\n\n'];
	if (proto === 'llamacpp')
		return ['data: ' + JSON.stringify({ content: '', stop: true, stopped_limit: false }) + '\n\n'];
	if (proto === 'tgi')
		return ['data:' + JSON.stringify({ token: { id: 2, text: '</s>', special: true }, generated_text: 'x', details: { finish_reason: 'eos_token', generated_tokens: n } }) + '\n\n'];
	return ['event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"}}\n\n', 'event: message_stop\ndata: {"type":"message_stop"}\n\n'];
}

function whole(proto, chat, text) {
	if (proto === 'openai')
		return chat ? { choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }] }
			: { choices: [{ index: 0, text: text, finish_reason: 'stop' }] };
	if (proto === 'llamacpp')
		return { content: text, stop: true, stopped_limit: false };
	if (proto === 'tgi')
		return { generated_text: text, details: { finish_reason: 'eos_token' } };
	return { type: 'message', content: [{ type: 'text', text: text }], stop_reason: 'end_turn' };
}

function writeChunks(res, s, chunk, done) {
	let off = 0;
	const step = () => {
		if (res.destroyed) return;
		if (off >= s.length) return done();
		res.write(s.slice(off, off + chunk), 'latin1');   /* the file's bytes as they are */
		off += chunk;
		setImmediate(step);
	};
	step();
}

const server = http.createServer((req, res) => {
	const url = new URL(req.url, 'http://x');
	if (req.method === 'GET') {
		res.setHeader('Content-Type', 'application/json');
		const k = url.searchParams.get('key');
		if (url.pathname === '/count')
			return res.end(JSON.stringify({ count: counts[k] || 0 }));
		if (url.pathname === '/conns')
			return res.end(JSON.stringify({ count: postConns }));
		if (url.pathname === '/drop') {
			const n = postSockets.size;
			postSockets.forEach((s) => s.destroy());
			postSockets.clear();
			return res.end(JSON.stringify({ dropped: n }));
		}
		if (url.pathname === '/held')
			return res.end(JSON.stringify({ held: (held[k] || []).length }));
		if (url.pathname === '/release') {
			const w = held[k] || [];
			released[k] = true;
			delete held[k];
			w.forEach((f) => f());
			return res.end(JSON.stringify({ released: w.length }));
		}
		return res.end(JSON.stringify(last));
	}
	if (!req.socket.tpoPost) {
		req.socket.tpoPost = true;
		postConns++;
		postSockets.add(req.socket);
		req.socket.on('close', () => postSockets.delete(req.socket));
	}
	let body = '';
	req.on('data', (d) => body += d);
	req.on('end', () => {
		let j = {};
		try { j = JSON.parse(body); } catch (e) { res.statusCode = 400; return res.end('{"error":"bad json"}'); }
		last = { path: url.pathname, headers: req.headers, body: j };
		const p = url.pathname;
		const proto = p.startsWith('/v1/chat') || p === '/v1/completions' ? 'openai'
			: p === '/completion' ? 'llamacpp' : p.startsWith('/generate') ? 'tgi' : 'anthropic';
		const chat = p === '/v1/chat/completions';
		const prompt = j.prompt || j.inputs || (j.messages && j.messages[0] && j.messages[0].content) || '';
		const stream = proto === 'tgi' ? p === '/generate_stream' : j.stream === true;
		const c = (k) => cmd(prompt, k);
		const go = () => {
			const flaky = c('flaky');
			if (flaky !== null) {
				const [n, s, key] = flaky.split(':');
				counts[key] = (counts[key] || 0) + 1;
				if (counts[key] <= Number(n)) {
					if (s === '429' || s === '503') res.setHeader('Retry-After', '0');
					res.statusCode = Number(s);
					res.setHeader('Content-Type', 'application/json');
					return res.end(JSON.stringify({ error: { message: 'flaky ' + s + ' #' + counts[key] } }));
				}
			}
			const st = c('status');
			if (st !== null) {
				res.statusCode = Number(st);
				res.setHeader('Content-Type', 'application/json');
				return res.end(JSON.stringify({ error: { message: 'injected status ' + st, type: 'test' } }));
			}
			if (!stream && c('stall') !== null) {
				res.setHeader('Content-Type', 'application/json');
				return res.flushHeaders();
			}
			if (!stream && c('big') !== null) {
				res.setHeader('Content-Type', 'application/json');
				return res.end(JSON.stringify(whole(proto, chat, 'x'.repeat(Number(c('big'))))));
			}
			if (!stream && c('json') !== null) {
				res.setHeader('Content-Type', 'application/json');
				return res.end(fs.readFileSync(path.join(golden, c('json')), 'latin1'), 'latin1');
			}
			if (!stream) {
				res.setHeader('Content-Type', 'application/json');
				return res.end(JSON.stringify(whole(proto, chat, 'tok0 tok1 tok2')));
			}
			res.setHeader('Content-Type', 'text/event-stream');
			res.setHeader('Cache-Control', 'no-cache');
			res.flushHeaders();
			if (c('stall') !== null) return;
			const g = c('golden');
			const chunk = Number(c('chunk') || 3);
			if (g !== null)
				return writeChunks(res, fs.readFileSync(path.join(golden, g), 'latin1'), chunk, () => res.end());
			if (c('garbage') !== null)
				return writeChunks(res, tokens(proto, 1, chat).join('') + 'data: {"choices": [oops\n\n', chunk, () => res.end());
			if (c('huge') !== null)
				return writeChunks(res, 'data: ' + 'x'.repeat(5 << 20) + '\n\n', 65536, () => res.end());
			const evs = tokens(proto, 5, chat);
			const sa = c('stall_after'), ra = c('reset_after');
			if (sa !== null)
				return writeChunks(res, evs.slice(0, Number(sa)).join(''), chunk, () => {});
			if (ra !== null)
				return writeChunks(res, evs.slice(0, Number(ra)).join(''), chunk, () => setTimeout(() => res.socket.resetAndDestroy(), 20));
			const ed = c('end_delay');
			writeChunks(res, evs.concat(ending(proto, 5)).join(''), chunk,
				() => ed === null ? res.end() : setTimeout(() => res.end(), Number(ed)));
		};
		const key = c('key');
		if (key !== null)
			counts[key] = (counts[key] || 0) + 1;
		const slow = c('slow_headers');
		const run = () => { if (slow !== null) setTimeout(go, Number(slow)); else go(); };
		const hold = c('hold');
		if (hold !== null && !released[hold])
			(held[hold] = held[hold] || []).push(run);
		else
			run();
	});
});
server.keepAliveTimeout = 30000;
server.listen(0, '127.0.0.1', () => {
	process.stdout.write('PORT ' + server.address().port + '\n');
});
process.on('SIGTERM', () => process.exit(0));
