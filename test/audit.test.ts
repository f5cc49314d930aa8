import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { openTestDatabase } from './helpers/database.js';
import { OCI_MANIFEST, pushBlob, pushImage } from './helpers/oci.js';
import { basicAuth, startServer, type TestServer } from './helpers/server.js';

interface Event {
  id: number;
  type: string;
  actor: string | null;
  repository: string | null;
  reference: string | null;
  digest: string | null;
  outcome: string;
  details: Record<string, unknown>;
}

let server: TestServer;
before(async () => {
  server = await startServer({ env: { MCR_AUDIT_RECORD_PULLS: 'true' } });
});
after(async () => {
  await server.cleanup();
});

async function api(
  method: string,
  target: string,
  body?: unknown,
  authorization?: string,
): Promise<Response> {
  const init: RequestInit = {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  };
  if (authorization) {
    return fetch(`${server.url}${target}`, {
      ...init,
      headers: { ...init.headers, authorization },
    });
  }
  return server.fetch(target, init);
}

async function events(query = ''): Promise<Event[]> {
  const response = await api('GET', `/v1/audit?limit=1000${query}`);
  assert.equal(response.status, 200);
  return ((await response.json()) as { events: Event[] }).events;
}

async function verify(): Promise<{
  ok: boolean;
  checked: number;
  broken: { id: number; reason: string } | null;
}> {
  return (await (await api('GET', '/v1/audit/verify')).json()) as {
    ok: boolean;
    checked: number;
    broken: { id: number; reason: string } | null;
  };
}

describe('audit events', () => {
  it('record each kind of action', async () => {
    const alice = basicAuth('alice', 'alice-password');
    assert.equal(
      (
        await api('POST', '/v1/accounts', {
          username: 'alice',
          password: 'alice-password',
          role: 'user',
          kind: 'human',
        })
      ).status,
      201,
    );
    assert.equal((await api('PATCH', '/v1/accounts/alice', { role: 'user' })).status, 200);
    assert.equal(
      (
        await fetch(`${server.url}/v2/`, {
          headers: { authorization: basicAuth('alice', 'wrong-password') },
        })
      ).status,
      401,
    );
    assert.equal(
      (await fetch(`${server.url}/v2/`, { headers: { authorization: alice } })).status,
      200,
    );

    const token = (await (
      await api('POST', '/v1/accounts/alice/tokens', { name: 'ci' }, alice)
    ).json()) as { id: number };
    assert.equal(
      (await api('DELETE', `/v1/accounts/alice/tokens/${token.id}`, undefined, alice)).status,
      200,
    );

    const image = await pushImage(server, 'audited/app', 'v1');
    const second = await pushImage(server, 'audited/app', 'v2');
    // Moving v1 onto the second manifest is a tag move.
    assert.equal(
      (
        await server.fetch('/v2/audited/app/manifests/v1', {
          method: 'PUT',
          body: second.body,
          headers: { 'content-type': OCI_MANIFEST },
        })
      ).status,
      201,
    );
    assert.equal((await server.fetch('/v2/audited/app/manifests/v1')).status, 200);
    assert.equal(
      (await server.fetch('/v2/audited/app/manifests/v2', { method: 'DELETE' })).status,
      202,
    );
    assert.equal(
      (await server.fetch(`/v2/audited/app/manifests/${image.digest}`, { method: 'DELETE' }))
        .status,
      202,
    );
    const blob = await pushBlob(server, 'audited/app', 'loose blob');
    assert.equal((await server.fetch(`/v2/audited/app/blobs/${blob}`)).status, 200);
    assert.equal(
      (await server.fetch(`/v2/audited/app/blobs/${blob}`, { method: 'DELETE' })).status,
      202,
    );
    assert.equal(
      (
        await fetch(`${server.url}/v2/audited/app/blobs/uploads/`, {
          method: 'POST',
          headers: { authorization: alice },
        })
      ).status,
      403,
    );

    const rule = (await (
      await api('POST', '/v1/policies', {
        priority: 5,
        effect: 'deny',
        subjects: ['account:alice'],
        actions: ['pull'],
        repositories: ['secret/**'],
      })
    ).json()) as { id: number };
    assert.equal(
      (
        await api('PUT', `/v1/policies/${rule.id}`, {
          priority: 6,
          effect: 'deny',
          subjects: ['account:alice'],
          actions: ['pull'],
          repositories: ['secret/**'],
        })
      ).status,
      200,
    );
    assert.equal((await api('DELETE', `/v1/policies/${rule.id}`)).status, 204);
    assert.equal((await api('DELETE', '/v1/repositories/audited/app')).status, 204);
    assert.equal((await api('DELETE', '/v1/accounts/alice')).status, 204);
    const gc = (await (await api('POST', '/v1/gc', { dry_run: true })).json()) as { id: number };
    // The run is audited once it has finished, just after its state changes.
    for (let i = 0; i < 100; i++) {
      const runEvents = await events('&type=gc.run');
      if (runEvents.some((event) => event.details.run === gc.id)) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    const recorded = await events();
    const find = (type: string, where: (event: Event) => boolean = () => true) =>
      recorded.find((event) => event.type === type && where(event));

    assert.ok(find('account.create', (e) => e.details.account === 'alice' && e.actor === 'admin'));
    assert.ok(find('account.update', (e) => e.details.account === 'alice'));
    assert.ok(find('account.delete', (e) => e.details.account === 'alice'));
    assert.ok(find('login', (e) => e.actor === 'alice' && e.outcome === 'failure'));
    assert.ok(find('login', (e) => e.actor === 'alice' && e.outcome === 'success'));
    assert.ok(find('token.issue', (e) => e.actor === 'alice' && e.details.tokenId === token.id));
    assert.ok(find('token.revoke', (e) => e.details.tokenId === token.id));
    assert.ok(
      find(
        'manifest.push',
        (e) => e.repository === 'audited/app' && e.digest === image.digest && e.reference === 'v1',
      ),
    );
    assert.ok(
      find(
        'tag.move',
        (e) =>
          e.reference === 'v1' && e.digest === second.digest && e.details.from === image.digest,
      ),
    );
    assert.ok(find('manifest.pull', (e) => e.reference === 'v1'));
    assert.ok(find('tag.delete', (e) => e.reference === 'v2'));
    assert.ok(find('manifest.delete', (e) => e.digest === image.digest));
    assert.ok(find('blob.pull', (e) => e.digest === blob));
    assert.ok(find('blob.delete', (e) => e.digest === blob));
    assert.ok(
      find(
        'access.denied',
        (e) => e.actor === 'alice' && e.outcome === 'denied' && e.repository === 'audited/app',
      ),
    );
    assert.ok(find('policy.create'));
    assert.ok(find('policy.update'));
    assert.ok(find('policy.delete', (e) => e.details.ruleId === rule.id));
    assert.ok(find('repository.delete', (e) => e.repository === 'audited/app'));
    assert.ok(find('gc.start', (e) => e.details.run === gc.id));
    assert.ok(find('gc.run', (e) => e.details.run === gc.id && e.outcome === 'success'));

    const text = JSON.stringify(recorded);
    assert.ok(!text.includes('alice-password'));
    assert.ok(!text.includes('mcr_pat_'));
  });

  it('filter by type, actor, repository and time', async () => {
    const pushes = await events('&type=manifest.push');
    assert.ok(pushes.length >= 2);
    assert.ok(pushes.every((event) => event.type === 'manifest.push'));
    const byAlice = await events('&actor=alice');
    assert.ok(byAlice.length > 0);
    assert.ok(byAlice.every((event) => event.actor === 'alice'));
    const byRepository = await events('&repository=audited/app');
    assert.ok(byRepository.every((event) => event.repository === 'audited/app'));
    assert.deepEqual(
      await events(`&since=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`),
      [],
    );
    const all = await events();
    assert.deepEqual(
      all.map((event) => event.id),
      [...all.map((event) => event.id)].sort((a, b) => b - a),
    );
  });

  it('page with a cursor', async () => {
    const first = (await (await api('GET', '/v1/audit?limit=2')).json()) as {
      events: Event[];
      next_cursor: string;
    };
    const second = (await (
      await api('GET', `/v1/audit?limit=2&cursor=${first.next_cursor}`)
    ).json()) as { events: Event[] };
    assert.equal(first.events.length, 2);
    assert.ok((second.events[0]?.id ?? Infinity) < (first.events[1]?.id ?? 0));
  });
});

describe('audit verification', () => {
  it('passes on an untouched log', async () => {
    const result = await verify();
    assert.equal(result.ok, true);
    assert.ok(result.checked > 10);
  });

  it('names an edited row', async () => {
    const db = await openTestDatabase(server.dataDir);
    const target = (
      await db.query(
        "select id, details from audit_events where type = 'manifest.push' order by id limit 1",
      )
    ).rows[0] as { id: number; details: string };
    await db.query("update audit_events set actor = 'mallory' where id = ?", [target.id]);
    const result = await verify();
    assert.equal(result.ok, false);
    assert.equal(result.broken?.id, target.id);
    assert.match(result.broken?.reason ?? '', /edited/);
    await db.query("update audit_events set actor = 'admin' where id = ?", [target.id]);
    assert.equal((await verify()).ok, true);
    await db.close();
  });

  it('names the row after a removed one, and catches a removed newest row', async () => {
    const db = await openTestDatabase(server.dataDir);
    const rows = (await db.query('select * from audit_events order by id')).rows as Array<
      Record<string, unknown> & { id: number }
    >;
    const middle = rows[Math.floor(rows.length / 2)] as Record<string, unknown> & { id: number };
    await db.query('delete from audit_events where id = ?', [middle.id]);
    const result = await verify();
    assert.equal(result.ok, false);
    assert.equal(result.broken?.id, middle.id + 1);

    const columns = Object.keys(middle);
    await db.query(
      `insert into audit_events (${columns.join(', ')}) values (${columns.map(() => '?').join(', ')})`,
      columns.map((column) => middle[column]),
    );
    assert.equal((await verify()).ok, true);

    const newest = rows[rows.length - 1] as { id: number };
    await db.query('delete from audit_events where id = ?', [newest.id]);
    const truncated = await verify();
    assert.equal(truncated.ok, false);
    assert.equal(truncated.broken?.id, newest.id);
    await db.close();
  });
});

describe('audit retention', () => {
  it('prunes old events and still verifies from the first kept row', async () => {
    const dataServer = await startServer();
    const dataDir = dataServer.dataDir;
    try {
      await pushImage(dataServer, 'old/app', 'v1');
      await new Promise((resolve) => setTimeout(resolve, 2500));
      await pushImage(dataServer, 'new/app', 'v1');
      await dataServer.stop();

      const restarted = await startServer({ dataDir, env: { MCR_AUDIT_RETENTION: '2s' } });
      try {
        const response = await restarted.fetch('/v1/audit?limit=1000');
        const kept = ((await response.json()) as { events: Event[] }).events;
        assert.ok(kept.some((event) => event.repository === 'new/app'));
        assert.ok(!kept.some((event) => event.repository === 'old/app'));
        const result = (await (await restarted.fetch('/v1/audit/verify')).json()) as {
          ok: boolean;
        };
        assert.equal(result.ok, true);
      } finally {
        await restarted.stop();
      }
    } finally {
      await dataServer.cleanup();
    }
  });
});
