// The official Slack Web API client for Node (@slack/web-api), pointed at a real
// `switchboard dev` on free loopback ports: post, edit, delete, react, thread, history,
// search, and the RTM events a gateway sends for them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebClient } from '@slack/web-api';
import { RTMClient } from '@slack/rtm-api';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = process.env.SWITCHBOARD_BIN ?? join(root, 'target', 'debug', 'switchboard');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let dev, urls, tokens;

before(async () => {
  assert.ok(existsSync(bin), `${bin} is missing: run \`cargo build --bin switchboard\` first`);
  const data = mkdtempSync(join(tmpdir(), 'switchboard-sdk-node-'));
  dev = spawn(bin, ['dev', '--data-dir', data, '--http-port', '0'], { stdio: 'ignore', detached: true });
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !(existsSync(join(data, 'urls.json')) && existsSync(join(data, 'tokens.json')))) {
    await sleep(100);
  }
  urls = JSON.parse(readFileSync(join(data, 'urls.json'), 'utf8'));
  tokens = JSON.parse(readFileSync(join(data, 'tokens.json'), 'utf8'));
  while (Date.now() < deadline) {
    try {
      const ring = await (await fetch(`${urls.admin}/ring`)).json();
      if (ring.members.some((m) => m.status === 'up')) break;
    } catch {}
    await sleep(100);
  }
});

after(() => {
  if (dev) process.kill(-dev.pid, 'SIGTERM');
});

const client = (user) => new WebClient(tokens.users[user].token, { slackApiUrl: `${urls.api}/`, retryConfig: { retries: 0 } });

test('auth.test and rtm.connect', async () => {
  const alice = client('alice');
  const me = await alice.auth.test();
  assert.equal(me.user_id, tokens.users.alice.id);
  const rtm = await alice.rtm.connect();
  assert.match(rtm.url, /^ws:\/\/127\.0\.0\.1:\d+\/rtm\?token=/);
});

test('post, edit, react, thread, delete and read history', async () => {
  const alice = client('alice');
  const bob = client('bob');
  const { channel } = await alice.conversations.create({ name: `node-${Date.now()}` });
  await bob.conversations.join({ channel: channel.id });
  const posted = await alice.chat.postMessage({ channel: channel.id, text: 'hello from node', client_msg_id: 'node-1' });
  const again = await alice.chat.postMessage({ channel: channel.id, text: 'hello from node', client_msg_id: 'node-1' });
  assert.equal(again.ts, posted.ts);
  await alice.chat.update({ channel: channel.id, ts: posted.ts, text: 'hello, edited from node' });
  await bob.reactions.add({ channel: channel.id, timestamp: posted.ts, name: 'rocket' });
  await bob.chat.postMessage({ channel: channel.id, text: 'node reply', thread_ts: posted.ts });
  const doomed = await bob.chat.postMessage({ channel: channel.id, text: 'gone soon' });
  await bob.chat.delete({ channel: channel.id, ts: doomed.ts });

  const history = await alice.conversations.history({ channel: channel.id, limit: 10 });
  assert.deepEqual(history.messages.map((m) => m.text), ['hello, edited from node']);
  assert.equal(history.messages[0].reply_count, 1);
  assert.equal(history.messages[0].reactions[0].name, 'rocket');
  const replies = await alice.conversations.replies({ channel: channel.id, ts: posted.ts });
  assert.deepEqual(replies.messages.map((m) => m.text), ['hello, edited from node', 'node reply']);

  await assert.rejects(bob.chat.update({ channel: channel.id, ts: posted.ts, text: 'not mine' }), (e) => e.data.error === 'cant_update_message');
  await assert.rejects(alice.conversations.history({ channel: 'C0NOSUCHONE' }), (e) => e.data.error === 'channel_not_found');
});

test('search.messages finds what was posted', async () => {
  const alice = client('alice');
  const word = `okapi${Date.now()}`;
  await alice.chat.postMessage({ channel: '#general', text: `an ${word} appeared` });
  let found;
  for (let i = 0; i < 100; i++) {
    found = await alice.search.messages({ query: `${word} in:#general`, count: 5 });
    if (found.messages.total === 1) break;
    await sleep(100);
  }
  assert.equal(found.messages.total, 1);
  assert.equal(found.messages.matches[0].username, 'alice');

  // The client's paginate() follows response_metadata.next_cursor to the last page.
  for (let n = 0; n < 4; n++) {
    await alice.chat.postMessage({ channel: '#general', text: `${word} again ${n}` });
  }
  for (let i = 0; i < 100; i++) {
    if ((await alice.search.messages({ query: word })).messages.total === 5) break;
    await sleep(100);
  }
  const pages = [];
  for await (const page of alice.paginate('search.messages', { query: word, sort: 'timestamp', sort_dir: 'asc', count: 2, cursor: '*' })) {
    pages.push(page.messages.matches.map((m) => m.text));
  }
  assert.deepEqual(pages.map((p) => p.length), [2, 2, 1]);
  assert.deepEqual(pages.flat(), [`an ${word} appeared`, ...[0, 1, 2, 3].map((n) => `${word} again ${n}`)]);
});

test('attachments with no text are kept as text and found by search', async () => {
  const alice = client('alice');
  const word = `pangolin${Date.now()}`;
  // The client sends a form body, with the attachments as JSON text.
  const posted = await alice.chat.postMessage({
    channel: '#general',
    attachments: [{ fallback: 'disk alert', color: 'danger', title: 'DiskFull', text: `${word} is 97% full` }],
  });
  assert.equal(posted.message.text, `DiskFull\n${word} is 97% full`);
  await assert.rejects(
    alice.chat.postMessage({ channel: '#general', text: 'x', attachments: [[1]] }),
    (e) => e.data.error === 'invalid_attachments',
  );
  let found;
  for (let i = 0; i < 100; i++) {
    found = await alice.search.messages({ query: word, count: 5 });
    if (found.messages.total === 1) break;
    await sleep(100);
  }
  assert.equal(found.messages.total, 1);
  assert.equal(found.messages.matches[0].ts, posted.ts);
});

test('user groups: create, rotate members, mention with link_names', async () => {
  const alice = client('alice');
  const handle = `oncall-${Date.now()}`;
  const { usergroup } = await alice.usergroups.create({ name: `On call ${handle}`, handle });
  assert.match(usergroup.id, /^S/);
  await assert.rejects(
    alice.usergroups.create({ name: `On call ${handle}` }),
    (e) => e.data.error === 'name_already_exists',
  );
  const rotated = await alice.usergroups.users.update({
    usergroup: usergroup.id,
    users: [tokens.users.bob.id, tokens.users.carol.id].join(','),
  });
  assert.deepEqual(rotated.usergroup.users, [tokens.users.bob.id, tokens.users.carol.id]);
  const listed = await alice.usergroups.users.list({ usergroup: usergroup.id });
  assert.deepEqual(listed.users, [tokens.users.bob.id, tokens.users.carol.id]);
  const paged = await alice.chat.postMessage({ channel: '#general', text: `@${handle} the build is red`, link_names: true });
  assert.equal(paged.message.text, `<!subteam^${usergroup.id}|@${handle}> the build is red`);
  await alice.usergroups.disable({ usergroup: usergroup.id });
  const groups = await alice.usergroups.list({ include_disabled: true });
  assert.ok(groups.usergroups.some((g) => g.id === usergroup.id && g.date_delete > 0));
});

test('the official RTM client receives the message and its changes', async () => {
  const alice = client('alice');
  const rtm = new RTMClient(tokens.users.bob.token, { slackApiUrl: `${urls.api}/`, autoReconnect: false, logLevel: 'error' });
  const events = [];
  for (const type of ['message', 'reaction_added']) rtm.on(type, (e) => events.push(e));
  const until = async (pred, what) => {
    for (let i = 0; i < 100; i++) {
      const e = events.find(pred);
      if (e) return e;
      await sleep(100);
    }
    assert.fail(`no ${what}; got ${JSON.stringify(events.slice(-5))}`);
  };
  await rtm.start();
  try {
    const marker = `node-rtm-${Date.now()}`;
    let posted;
    for (let i = 0; i < 20 && !events.some((e) => e.text === marker); i++) {
      posted = await alice.chat.postMessage({ channel: tokens.general, text: marker });
      await sleep(200);
    }
    await until((e) => e.type === 'message' && e.text === marker, 'message');
    await alice.chat.update({ channel: tokens.general, ts: posted.ts, text: `${marker} edited` });
    await alice.reactions.add({ channel: tokens.general, timestamp: posted.ts, name: 'wave' });
    const changed = await until((e) => e.subtype === 'message_changed' && e.message.ts === posted.ts, 'message_changed');
    assert.equal(changed.message.text, `${marker} edited`);
    const reaction = await until((e) => e.type === 'reaction_added' && e.item.ts === posted.ts, 'reaction_added');
    assert.equal(reaction.reaction, 'wave');
    // A message sent over the socket itself (RTMClient.sendMessage) is posted, answered with
    // its ts, relayed back, and stored.
    const sent = `${marker} over rtm`;
    const reply = await rtm.sendMessage(sent, tokens.general);
    assert.equal(reply.ok, true);
    assert.equal(reply.text, sent);
    assert.match(reply.ts, /^\d+\.\d{6}$/);
    await until((e) => e.type === 'message' && e.text === sent && e.ts === reply.ts, 'the sent message');
    const history = await alice.conversations.history({ channel: tokens.general, limit: 20 });
    assert.ok(history.messages.some((m) => m.ts === reply.ts && m.text === sent), 'the sent message is stored');
    // One the Web API refuses is rejected with its error.
    await assert.rejects(rtm.sendMessage('', tokens.general), (e) => e.data.error.msg === 'no_text');
    // chat.postEphemeral from alice reaches bob's RTM client as a message only he sees.
    const whisper = `${marker} for bob only`;
    const eph = await alice.chat.postEphemeral({ channel: tokens.general, user: tokens.users.bob.id, text: whisper });
    assert.equal(eph.ok, true);
    const seen = await until((e) => e.type === 'message' && e.text === whisper, 'the ephemeral message');
    assert.equal(seen.is_ephemeral, true);
    assert.equal(seen.ts, eph.message_ts);
    const seqs = events.filter((e) => e.channel === tokens.general && Number.isInteger(e.seq)).map((e) => e.seq);
    for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `contiguous seq: ${seqs}`);
  } finally {
    // @slack/rtm-api 7.0.4 keeps the replies it awaits in an array indexed by message id and
    // cancels each on disconnect with `for (const p of list) p.cancel()`: after sendMessage the
    // array has holes (ids start at 2) and disconnect throws on `undefined.cancel`. Its own bug,
    // against any server; keep only the real entries.
    rtm.awaitingReplyList = rtm.awaitingReplyList.filter(Boolean);
    await rtm.disconnect();
  }
});
