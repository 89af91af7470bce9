//! `realtime-server dev`: a throwaway PostgreSQL, a demo schema and the server
//! on it, in one command.

/// Runs the dev command; returns the process exit code.
pub async fn main() -> i32 {
    eprintln!("realtime-server dev: not implemented yet");
    2
}
