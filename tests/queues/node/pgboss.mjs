// A real pg-boss producer and worker for pipemon's preset tests.
// Uses this folder's pg-boss 10, or the pg-boss module PGBOSS_MODULE names (pg-boss 12 runs on
// node 22: tests/queues/node22).
//   node pgboss.mjs DSN setup      create the schema and the queues
//   node pgboss.mjs DSN send       enqueue the test scenario
//   node pgboss.mjs DSN send-slow  enqueue one job that runs for 4 s
//   node pgboss.mjs DSN work       process jobs until none is ready or running, then stop
const pgboss = await import(process.env.PGBOSS_MODULE || 'pg-boss')
const PgBoss = pgboss.PgBoss || pgboss.default // named export from pg-boss 11 on

const [dsn, command] = process.argv.slice(2)
const QUEUES = ['stems', 'mixdown']
const boss = new PgBoss({ connectionString: dsn, supervise: false, schedule: false })
boss.on('error', (error) => console.error('pg-boss error:', error.message))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

await boss.start()
if (command === 'setup') {
  for (const name of QUEUES) await boss.createQueue(name, { retryLimit: 1, retryDelay: 0 })
} else if (command === 'send') {
  for (const seconds of [0, 0.2, 0.4, 1.1]) await boss.send('stems', { kind: 'separate', seconds })
  for (let i = 0; i < 2; i++) await boss.send('stems', { kind: 'broken' }, { retryLimit: 0 })
  for (const key of ['a', 'b', 'c']) await boss.send('mixdown', { kind: 'flaky', key })
  for (let i = 0; i < 2; i++) await boss.send('stems', { kind: 'separate' }, { startAfter: 3600 })
} else if (command === 'send-slow') {
  await boss.send('stems', { kind: 'separate', seconds: 4 })
} else if (command === 'work') {
  const attempts = new Map()
  const handler = async ([job]) => {
    const { kind, seconds = 0, key } = job.data
    await sleep(seconds * 1000)
    if (kind === 'broken') throw new Error('corrupt upload')
    if (kind === 'flaky') {
      attempts.set(key, (attempts.get(key) || 0) + 1)
      if (attempts.get(key) === 1) throw new Error('transient')
    }
  }
  for (const name of QUEUES) await boss.work(name, { pollingIntervalSeconds: 0.5 }, handler)
  const db = boss.getDb()
  const deadline = Date.now() + 60000
  for (;;) {
    const { rows } = await db.executeSql(
      "SELECT count(*)::int AS n FROM pgboss.job WHERE state < 'completed' AND start_after <= now()")
    if (rows[0].n === 0) break
    if (Date.now() > deadline) { console.error('jobs still pending after 60 s'); process.exit(1) }
    await sleep(100)
  }
} else {
  console.error(`unknown command ${command}`)
  process.exit(2)
}
await boss.stop({ graceful: true, wait: true })
