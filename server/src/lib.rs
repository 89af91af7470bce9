//! realtime-server: streams PostgreSQL row changes, read from a logical
//! replication slot with `pgoutput`, to WebSocket clients that speak Phoenix
//! Channels (`@supabase/realtime-js` 1.x and 2.x, `phoenix`).

pub mod dev;
