//! The page served at `/`: a live view of the changes, over the same
//! WebSocket protocol the clients use. No build step, no external downloads.

pub const INDEX_HTML: &str = include_str!("page.html");
