// The realtime-js 2.x example of the README, run as is by
// tests/tests/realtime_js.rs (README.md must contain this file's example
// between the markers). Env: REALTIME_URL, TOKEN (any string when channels
// are not secured). Prints one JSON line per event, exits after an INSERT.
import WebSocket from 'ws'
import pkg from 'realtime-js-2-latest'
const { RealtimeClient } = pkg
const { REALTIME_URL, TOKEN } = process.env
const log = (kind, value) => {
  console.log(JSON.stringify({ kind, value }))
  if (kind === 'INSERT') setTimeout(() => process.exit(0), 200)
}

// README example start
const client = new RealtimeClient(REALTIME_URL, { params: { apikey: TOKEN }, transport: WebSocket })
const channel = client
  .channel('room-1', { config: { broadcast: { self: true, ack: true }, presence: { key: 'alice' } } })
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'messages', filter: 'room_id=eq.1' },
      (change) => log(change.eventType, change.new))   // values typed: numbers, booleans, objects
  .on('broadcast', { event: 'cursor' }, ({ payload }) => log('broadcast', payload))
  .on('presence', { event: 'sync' }, () => log('presence', channel.presenceState()))
  .subscribe(async (status) => {
    if (status !== 'SUBSCRIBED') return
    log('status', status)
    await channel.send({ type: 'broadcast', event: 'cursor', payload: { x: 1 } })
    await channel.track({ online_at: '2024-01-01T00:00:00Z' })
  })
// README example end

setTimeout(() => { console.log(JSON.stringify({ kind: 'timeout' })); process.exit(1) }, 30000).unref()
