fn main() {
    eprintln!("realtime-server: not implemented yet");
    std::process::exit(2);
}
