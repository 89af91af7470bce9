fn main() {
    eprintln!("realtime-operator: not implemented yet");
    std::process::exit(2);
}
