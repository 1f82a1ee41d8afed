//! `opsbot`: runs any bot from a config file; with no arguments, a console bot with the built-in
//! handlers, so a new user can talk to it at once. Your own program is the same with your
//! handlers added: see [`opsbot_bots::App`].

fn main() -> std::process::ExitCode {
    opsbot_bots::App::new().main()
}
