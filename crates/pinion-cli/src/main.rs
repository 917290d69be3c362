fn main() {
    std::process::exit(pinion_cli::main());
}
