// graphile-worker task for pipemon's preset tests: sleeps, then fails when asked to.
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export default async (payload, helpers) => {
  await sleep((payload.seconds || 0) * 1000)
  if (payload.broken) throw new Error('corrupt upload')
  if (payload.flaky && helpers.job.attempts === 1) throw new Error('transient')
}
